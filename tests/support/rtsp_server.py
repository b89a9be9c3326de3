"""A real RTSP camera for tests: gst-rtsp-server looping one video file as H.264 on 127.0.0.1.

Run with the system Python (it needs python3-gi and gir1.2-gst-rtsp-server-1.0):

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 --mount /cam VIDEO

The file is decoded once into memory (any format the installed GStreamer plugins decode; Motion JPEG in AVI
needs only the base and good plugins) and played in a loop, re-encoded with x264 for low latency, at the
file's frame rate. Prints READY once the server listens; runs until killed.
"""

from __future__ import annotations

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def decode(path: str) -> tuple[list[bytes], Gst.Caps, int, int]:
    """Every frame of the file as raw I420, with caps (frame rate included) and the frame rate (num, den)."""
    pipeline = Gst.parse_launch(
        "filesrc name=file ! decodebin ! videoconvert ! video/x-raw,format=I420"
        " ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("file").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    frames: list[bytes] = []
    caps = None
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        caps = sample.get_caps()
        buffer = sample.get_buffer()
        frames.append(buffer.extract_dup(0, buffer.get_size()))
    message = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if message is not None or not frames or caps is None:
        reason = message.parse_error()[0].message if message is not None else "no video frames"
        raise SystemExit(f"rtsp_server: cannot decode {path}: {reason}")
    structure = caps.get_structure(0)
    ok, num, den = structure.get_fraction("framerate")
    if not ok or num <= 0:
        num, den = 10, 1
    width, height = structure.get_int("width")[1], structure.get_int("height")[1]
    # built from text: Gst.Fraction needs the python3-gst overrides, which are not installed everywhere
    caps = Gst.Caps.from_string(
        f"video/x-raw,format=I420,width={width},height={height},framerate={num}/{den}"
    )
    return frames, caps, num, den


def serve(path: str, port: int, mount: str) -> None:
    frames, caps, num, den = decode(path)
    duration = Gst.util_uint64_scale_int(Gst.SECOND, den, num)
    gop = max(1, round(num / den))  # a keyframe every second: a (re)connecting client starts quickly

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( appsrc name=src format=time ! videoconvert"
        f" ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate=2000"
        " ! video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)

    def configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        source = media.get_element().get_by_name_recurse_up("src")
        source.set_property("caps", caps)
        count = [0]  # frames pushed into this media (each new media starts again at 0)

        def need_data(src: Gst.Element, _length: int) -> None:
            buffer = Gst.Buffer.new_wrapped(frames[count[0] % len(frames)])
            buffer.pts = count[0] * duration
            buffer.duration = duration
            count[0] += 1
            src.emit("push-buffer", buffer)

        source.connect("need-data", need_data)

    factory.connect("media-configure", configure)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        raise SystemExit(f"rtsp_server: cannot listen on 127.0.0.1:{port}")
    print("READY", flush=True)
    GLib.MainLoop().run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", help="video file to loop")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/cam")
    args = parser.parse_args()
    Gst.init(None)
    serve(args.video, args.port, args.mount)


if __name__ == "__main__":
    sys.exit(main())
