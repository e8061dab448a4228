from vidrt.cli import main

main()
