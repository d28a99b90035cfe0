"""The shardserve operator: reconciles ModelDeployments into KubeRay RayServices."""
