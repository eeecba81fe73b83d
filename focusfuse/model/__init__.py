"""The GACN network, its decision-map refinement, the tensor filters both use, and weights loading."""
