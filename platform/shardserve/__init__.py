"""shardserve: one ModelDeployment -> an OpenAI-compatible endpoint on Ray Serve + vLLM."""

__version__ = "0.1.0"
