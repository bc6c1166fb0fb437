"""legion: a secure, self-hosted runtime for fleets of autonomous LLM agents."""

__version__ = "0.1.0"
