"""Running the gateway: worker processes, health; later metrics, audit, admin, reload."""
