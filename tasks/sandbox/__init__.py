"""Agent sandbox (RecAgent-like): agents with profiles and memories act in rounds beside a recommender."""
