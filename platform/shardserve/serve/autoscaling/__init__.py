"""Queue-depth autoscaling: the policy Serve's controller runs and the vLLM
plugin that reports each engine's queue."""
