"""The coordinator: Flower ServerApp whose main loop is fedcore's round driver."""
