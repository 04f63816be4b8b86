"""The bottom layer every model, layer and benchmark module stands on: user errors, metrics, the collectives a
model needs under DDP, the allocator setting of its training loop and the working area. It imports nothing else
of this package."""
