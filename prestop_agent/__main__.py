from prestop_agent.launch import main

main()
