"""The LLM gateway: model resolution, budgets, failover, and LiteLLM behind them."""
