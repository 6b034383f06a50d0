"""The frozen executable's entry point: the same function as the installed ``prestop-agent`` command."""

from prestop_agent.launch import main

main()
