from prestop_agent.cli import main

main()
