"""The ROS-free core: detection, face crops, the classifier and its backends, tracking, the pipeline."""
