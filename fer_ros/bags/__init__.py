"""rosbag2 reading and writing, making bags from videos and datasets, replay and evaluation."""
