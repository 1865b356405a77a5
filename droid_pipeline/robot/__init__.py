"""The robot: URDF kinematics, the Panda arm and the Robotiq 2F-85 gripper model, and their assets."""
