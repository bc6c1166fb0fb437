from legion.cli.main import main

main()
