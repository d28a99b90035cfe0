"""What runs inside Ray Serve: the application builder, the model replica,
its OpenAI HTTP front, the autoscaling policy and the telemetry."""
