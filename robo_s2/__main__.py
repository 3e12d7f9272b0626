from robo_s2.cli import main

main()
