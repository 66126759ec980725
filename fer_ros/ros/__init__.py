"""The ROS 2 nodes (thin wrappers over the core and the therapy session), image conversion, parameters, launch."""
