"""Asset checks that are not part of an asset's own materialization (those are declared with the asset)."""
