"""Layer 4: memory measured (tracker, counter), simulated at full size (simulate), planned for a budget (planner)."""
