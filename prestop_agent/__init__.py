"""prestop-agent: take a pod out of Nacos and its load balancers, prove it, and exit within the budget."""

__version__ = "0.1.0"
