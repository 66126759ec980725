"""The ROS-free therapy session: stages, trials, scoring, the session log and its reports."""
