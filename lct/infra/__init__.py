"""Infrastructure: devices, memory, several processes, the metric suites' names, the torchvision fix."""
