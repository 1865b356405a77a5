"""Reading, checking and rendering converted episodes."""
