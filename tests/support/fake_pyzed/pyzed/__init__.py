"""Test double of the ZED SDK's ``pyzed`` package (see ``sl.py``); put on sys.path by tests only."""
