"""How each method trains: transfer.py (Zoom-shot and its baselines), distill.py (students from a
teacher's image embeddings), align.py (OTTER) with sinkhorn.py. Import the module you need; this
package imports none of them, so a light one (sinkhorn) does not pull in the others' dependencies."""
