from cnnkit.cli.main import main

main()
