"""Therapist's tablet dashboard: a ROS-free web app (`app`) over a backend that the ROS node
(`fer_ros.ros.dashboard_node`) provides, plus the session history read from the log folder."""
