"""The one attachment mechanism (vidrt.engine.attach): feature order on a module whatever the enable order, method
chains in feature order, per-object class attributes, innermost computation under hooks added before and after,
and one detach that restores every object exactly."""
from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from vidrt.engine import attach


class Tag(ModelHook):
    """Appends its tag to a shared log before calling what it wraps."""

    def __init__(self, tag: str, log: list):
        super().__init__()
        self.tag, self.log = tag, log

    def new_forward(self, module, *args, **kwargs):
        self.log.append(self.tag)
        return self.fn_ref.original_forward(*args, **kwargs)


def _linear():
    torch.manual_seed(0)
    return nn.Linear(3, 3).eval()


def test_hooks_keep_feature_order_whatever_the_enable_order():
    x = torch.randn(2, 3)
    for order in (["policy", "oom", "long"], ["oom", "long", "policy"], ["long", "policy", "oom"]):
        m, log = _linear(), []
        for feature in order:
            attach.wrap_module(m, Tag(feature, log), feature)
        m(x)
        assert log == ["long", "policy", "oom"], order   # outer first: long > policy > oom
        for feature in order:
            attach.detach(m, feature)
        assert "_diffusers_hook" not in vars(m) and "forward" not in vars(m)


def test_foreign_hooks_stay_and_the_computation_sits_under_them():
    """A hook another library registered before or after vidrt keeps wrapping the replaced computation."""
    x = torch.randn(2, 3)
    m, log = _linear(), []
    ref = m(x)
    HookRegistry.check_if_exists_or_initialize(m).register_hook(Tag("before", log), "before")
    attach.replace_computation(m, lambda mod, inp: log.append("computation") or attach.call_original(mod, inp) * 2,
                               "slicing")
    HookRegistry.check_if_exists_or_initialize(m).register_hook(Tag("after", log), "after")
    out = m(x)
    assert log == ["after", "before", "computation"] and torch.equal(out, ref * 2)
    assert attach.detach(m, "slicing") == 1
    log.clear()
    assert torch.equal(m(x), ref) and log == ["after", "before"]   # the foreign hooks are untouched


def test_method_chains_run_in_feature_order_and_restore_exactly():
    class Scheduler:
        def step(self, value):
            return value + 1

    sch, log = Scheduler(), []

    def wrapper(tag):
        def wrap(call, value):
            log.append(tag)
            return call(value) * 10
        return wrap

    attach.wrap_method(sch, "step", wrapper("policy"), "policy")
    attach.wrap_method(sch, "step", wrapper("run"), "run")
    attach.wrap_method(sch, "step", wrapper("long"), "long")
    assert sch.step(1) == 2000 and log == ["run", "long", "policy"]
    attach.detach(sch, "policy")
    assert sch.step(1) == 200
    attach.detach(sch, "run")
    attach.detach(sch, "long")
    assert vars(sch) == {} and sch.step(1) == 2


def test_class_attribute_override_for_one_object_only():
    class Pipe:
        @property
        def device(self):
            return "cuda"

    a, b = Pipe(), Pipe()
    attach.override_attribute(a, "device", property(lambda self: "cpu"), "long")
    assert (a.device, b.device) == ("cpu", "cuda") and isinstance(a, Pipe) and type(a) is not Pipe
    attach.detach(a, "long")
    assert type(a) is Pipe and a.device == "cuda"


def test_detach_of_a_pipeline_reaches_its_components():
    class Pipe:
        def __init__(self):
            self.transformer = _linear()
            self.scheduler = type("S", (), {"step": lambda self, v: v})()

        @property
        def components(self):
            return {"transformer": self.transformer, "scheduler": self.scheduler}

    pipe, log = Pipe(), []
    attach.wrap_module(pipe.transformer, Tag("oom", log), "oom")
    attach.wrap_method(pipe.scheduler, "step", lambda call, v: call(v) + 1, "oom")
    attach.set_state(pipe.transformer, "oom", {"retries": []})
    assert attach.detach(pipe, "oom") == 2
    assert vars(pipe.scheduler) == {} and "_diffusers_hook" not in vars(pipe.transformer)
    assert attach.get_state(pipe.transformer, "oom") is None


def test_removing_a_hook_from_the_middle_keeps_the_hooks_above():
    """diffusers' HookRegistry.remove_hook drops every new_forward hook above the removed one; vidrt's detach
    relinks the chain so the others keep running."""
    x = torch.randn(2, 3)
    m, log = _linear(), []
    ref = m(x)
    for feature in ("oom", "distributed", "long", "policy"):
        attach.wrap_module(m, Tag(feature, log), feature)
    attach.detach(m, "distributed")
    attach.detach(m, "oom")                # the innermost, under two others
    assert torch.equal(m(x), ref) and log == ["long", "policy"]
    log.clear()
    attach.wrap_module(m, Tag("oom", log), "oom")   # and back in, under them again
    m(x)
    assert log == ["long", "policy", "oom"]
