"""The bottom layer every model, layer and benchmark module stands on: user errors, metrics, the collectives a
model needs under DDP, the allocator setting of its training loop, the working area, and the training step with
its clock (``step``: the one step that training and ``mdl-bench perf`` both run). It imports nothing else of this
package."""
