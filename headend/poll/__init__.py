"""Polled meters: Modbus TCP and DL/T 645-2007 meters read on a schedule, one request at a time per serial bus."""
