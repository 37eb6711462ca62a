"""The planner's measured tables and the autotune cache."""
