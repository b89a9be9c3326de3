"""Applying a config difference to the running service, part by part, without a restart.

Everything that can fail on bad input is prepared first, beside what runs: the new model is loaded and
warmed up, the new MQTT client is built. Only then is anything changed, in an order that keeps every
untouched camera streaming: the model is swapped between two batches; removed cameras stop and their
traces go (the partial reporting window to the spool, retained MQTT state, Home Assistant entities, metric
series); changed cameras restart alone (or take new metadata in place); added cameras start; the sinks take
their new settings. A failure in the preparation leaves the service exactly as it was.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from daemon import allocator
from daemon.config import Config, ConfigError
from daemon.model.session import Model, ModelError, batch_settings
from daemon.reload.diff import CAMERA_IN_PLACE_KEYS, ConfigDiff
from daemon.reload.reloader import ReloadError
from daemon.reload.series import remove_camera_series
from daemon.sinks.mqtt import MqttPublisher
from daemon.web.api import ModelInfo

if TYPE_CHECKING:
    from daemon.service import Service

log = logging.getLogger("edgewatch.reload")

SYNC_TIMEOUT = 30.0  # seconds for inference / the sinks to reach the point a change waits for


class LiveConfig:
    """The reload's `Target`: the running service."""

    def __init__(self, service: Service) -> None:
        self._service = service

    @property
    def config(self) -> Config:
        return self._service.config

    def apply(self, new: Config, change: ConfigDiff) -> None:
        service = self._service
        model = load_model(new) if change.needs_new_session else None
        switch = service.sinks.mqtt  # None with MQTT off (turning it on or off needs a restart)
        publisher = self._new_publisher(new) if switch and "mqtt" in change.sections_changed else None
        if change.model_keys:
            self._apply_model(new, model)
        for camera_id in change.cameras_removed:
            self._remove_camera(camera_id)
        cameras = {camera.id: camera for camera in new.cameras}
        for camera_id, keys in change.cameras_changed.items():
            if set(keys) - CAMERA_IN_PLACE_KEYS:
                service.restart_camera(cameras[camera_id])
                service.sinks.events.set_camera(cameras[camera_id], new)
            else:
                service.replace_camera_config(cameras[camera_id])
        for camera in change.cameras_added:
            service.sinks.events.set_camera(camera, new)
            service.add_camera(camera)
        if change.cameras_added or change.cameras_removed or change.cameras_changed:
            self._set_cameras(new)
        if switch and publisher:
            self._tell_counts(publisher, new)  # before it connects: the zones and lines it keeps
            switch.replace(publisher, service.camera_statuses)
            self._tell_counts(publisher, new)  # and what changed while the old publisher still had them
        sections = change.sections_changed
        if "roboflow" in sections and service.sinks.monitoring is not None:
            service.sinks.monitoring.set_settings(new.roboflow)
        if "alerts" in sections:
            service.alerts.set_config(new.alerts)
        if "api" in sections and service.api is not None:
            service.api.set_settings(new.api)
        service.config = new

    def _apply_model(self, new: Config, model: Model | None) -> None:
        service = self._service
        settings = new.model
        running = model or service.model
        max_batch, batch_timeout = batch_settings(settings, running.provider)
        if model is not None or settings.id != service.config.model.id:
            paused = service.worker.swap_model(running, settings.id, max_batch, SYNC_TIMEOUT)
            if paused is None:
                raise ReloadError(
                    f"{new.source}: model: inference did not reach the end of a batch within "
                    f"{SYNC_TIMEOUT:.0f} s; the running model stays"
                )
        running.set_thresholds(settings)
        service.worker.set_batch_timeout(batch_timeout)
        if model is not None:
            service.model = model
            service.metrics.set_provider(model.provider)
            log.info("model %s (%s) now runs on %s; inference paused %.1f ms for the swap",
                     settings.path.name, settings.id, model.provider, paused * 1000)
        if service.api is not None:
            service.api.set_model(ModelInfo.of(service.model), new)
        if model is not None:
            allocator.return_freed_memory()  # the old model's, and what loading the new one left in the heaps

    def _remove_camera(self, camera_id: str) -> None:
        """Stop it, let its last results through the sinks, then clear what it left everywhere."""
        service = self._service
        service.stop_camera(camera_id)
        service.board.remove_camera(camera_id)
        synced = service.worker.between_batches(lambda: service.worker.forget_camera(camera_id), SYNC_TIMEOUT)
        if not (synced and service.events_thread.barrier(SYNC_TIMEOUT)):
            log.warning("camera %s: its last results were not through the sinks in time", camera_id)
        for part in (service.sinks.events, service.sinks.mqtt, service.sinks.monitoring):
            if part is not None:
                part.remove_camera(camera_id)
        service.alerts.forget_camera(camera_id)
        service.sinks.confidence.forget_camera(camera_id)
        remove_camera_series(service.metrics.registry, camera_id)
        log.info("camera %s removed", camera_id)

    def _tell_counts(self, publisher: MqttPublisher, new: Config) -> None:
        """Every tracked camera's zone occupancy and line totals, for a publisher to another broker."""
        for camera in new.cameras:
            counts = self._service.sinks.events.counts(camera.id)
            if counts is not None:
                publisher.on_counts(camera.id, *counts)

    def _set_cameras(self, new: Config) -> None:
        service = self._service
        for part in (service.sinks.monitoring, service.api):
            if part is not None:
                part.set_cameras(new)

    def _new_publisher(self, new: Config) -> MqttPublisher:
        service = self._service
        try:
            return MqttPublisher(
                new.mqtt,
                new.device.id,
                [camera.id for camera in new.cameras],
                service.metrics.mqtt,  # type: ignore[arg-type]  # present while MQTT is on
                discovery_state=new.roboflow.spool.parent / "homeassistant.json",
            )
        except ConfigError as exc:
            raise ReloadError(f"{new.source}: {exc}") from None


def load_model(config: Config) -> Model:
    """The new model, loaded beside the running one and warmed up; ReloadError if it cannot be used."""
    try:
        model = Model.load(config.model)
        model.warm_up()
    except ModelError as exc:
        raise ReloadError(f"{config.source}: model.path: {exc}") from None
    return model
