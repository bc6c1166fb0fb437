"""Where agents run: the RuntimeBackend interface, the Docker backend, images, and a fake."""
