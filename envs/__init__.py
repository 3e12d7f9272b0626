"""MuJoCo cube-picking task: env, controller, scripted expert."""
