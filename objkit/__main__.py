from objkit.cli import main

main()
