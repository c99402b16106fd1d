pytest_plugins = ["tests.hostfixtures"]
