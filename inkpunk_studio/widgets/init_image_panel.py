"""The img2img init image: a thumbnail beside the prompt, a strength slider and a clear button.

The panel (objectName ``initImagePanel``) loads what it is given (a file, file bytes, or a QImage from a drop)
off the GUI thread through :func:`read_source`, which rejects anything unsafe with ``ImageLoadError``. Only a
successful load replaces the current init image, so a bad drop changes nothing. When the image carries
generation parameters, the panel shows a "Use its parameters" button: the non-blocking offer to restore them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QSize, Qt, Signal
from PySide6.QtGui import QImage, QPixmap, QResizeEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..history import to_qimage
from ..imageload import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageLoadError, fit_to_size, load_image
from ..metadata import ImageParams, read_params

log = logging.getLogger(__name__)

THUMB = 84
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.gif *.tif *.tiff);;All files (*)"
DEFAULT_STRENGTH = 0.75


@dataclass
class LoadedImage:
    image: Image.Image  # normalised RGB, full size
    params: ImageParams | None  # generation parameters found in it
    thumbnail: QImage  # small copy for the panel (made off the GUI thread)


def qimage_png_bytes(image: QImage) -> bytes:
    """Encode a QImage as PNG (thread-safe: QImage and a local QBuffer only)."""
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    if not image.save(buffer, "PNG"):
        raise ImageLoadError("The dropped image data could not be read.")
    buffer.close()
    return bytes(data.data())


def read_source(source: str | Path | bytes | QImage, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_bytes: int = DEFAULT_MAX_BYTES) -> LoadedImage:
    """Decode an init image and its metadata (blocking; run it off the GUI thread).

    Raises ``ImageLoadError`` (message for the person) for non-images, damaged files, bombs and huge files.
    """
    params: ImageParams | None
    if isinstance(source, QImage):
        if source.isNull():
            raise ImageLoadError("The dropped image data is empty.")
        if source.width() * source.height() > max_pixels:
            raise ImageLoadError(f"The image is too large: {source.width()}x{source.height()} pixels.")
        text = source.text("parameters")  # Qt keeps a PNG's text chunks
        params = ImageParams.from_parameters_text(text) if text else None
        source = qimage_png_bytes(source)
    else:
        params = None
    image = load_image(source, max_pixels=max_pixels, max_bytes=max_bytes)
    if params is None:
        params = read_params(source)
    small = image.copy()
    small.thumbnail((THUMB * 2, THUMB * 2), Image.Resampling.LANCZOS)  # 2x for high-DPI screens
    return LoadedImage(image, params, to_qimage(small))


class ElidedLabel(QLabel):
    """A one-line label that shortens its text with "…" to the width it gets (and asks for no minimum)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._full = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

    def set_full_text(self, text: str) -> None:
        self._full = text
        self.setToolTip(text)
        self._elide()

    def full_text(self) -> str:
        return self._full

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        self.setText(self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideMiddle, max(self.width(), 20)))


class InitImagePanel(QWidget):
    """Empty: a one-line hint and "Choose…". Set: thumbnail, name, strength slider, clear, restore offer."""

    imageSet = Signal(str, object)  # display name, ImageParams | None
    loadFailed = Signal(str)  # user-facing message; nothing was changed
    restoreRequested = Signal(object)  # ImageParams: the person accepted the offer
    cleared = Signal()

    def __init__(self, tasks, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("initImagePanel")
        self._tasks = tasks
        self.max_pixels = DEFAULT_MAX_PIXELS  # limits for what may be loaded (tests lower them)
        self.max_bytes = DEFAULT_MAX_BYTES
        self._image: Image.Image | None = None
        self._params: ImageParams | None = None
        self._name = ""
        self._fitted: tuple[tuple[int, int], Image.Image] | None = None
        self._serial = 0  # the newest load wins when several are in flight
        self._build()
        self._show_state()

    def _build(self) -> None:
        self.empty_row = QWidget(self)
        self.empty_row.setObjectName("initImageEmpty")
        hint = QLabel("Init image: none. Drop a picture on the canvas for img2img", self.empty_row)
        hint.setProperty("role", "hint")
        hint.setWordWrap(True)
        self.choose_button = QToolButton(self.empty_row)
        self.choose_button.setObjectName("chooseInitButton")
        self.choose_button.setText("Choose…")
        self.choose_button.setToolTip("Pick an image file to start from (img2img)")
        self.choose_button.clicked.connect(self.choose_file)
        row = QHBoxLayout(self.empty_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(hint, 1)
        row.addWidget(self.choose_button)

        self.full = QWidget(self)
        self.full.setObjectName("initImageFull")
        self.full.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)  # draw the QSS frame
        self.thumb = QLabel(self.full)
        self.thumb.setObjectName("initImageThumb")
        self.thumb.setFixedSize(QSize(THUMB, THUMB))
        self.thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        title = QLabel("Init image", self.full)
        title.setProperty("role", "section")
        self.name_label = ElidedLabel(self.full)
        self.name_label.setObjectName("initImageName")
        self.name_label.setProperty("role", "hint")
        self.size_label = QLabel(self.full)
        self.size_label.setObjectName("initImageSize")
        self.size_label.setProperty("role", "hint")
        self.clear_button = QToolButton(self.full)
        self.clear_button.setObjectName("clearInitButton")
        self.clear_button.setText("✕")
        self.clear_button.setToolTip("Clear the init image (back to text-to-image)")
        self.clear_button.clicked.connect(self.clear)

        self.strength_slider = QSlider(Qt.Orientation.Horizontal, self.full)
        self.strength_slider.setObjectName("strengthSlider")
        self.strength_slider.setRange(0, 100)
        self.strength_slider.setSingleStep(1)
        self.strength_slider.setPageStep(5)
        self.strength_slider.setToolTip("Denoising strength: 0 keeps the init image, 1 replaces it entirely")
        self.strength_value = QLabel(self.full)
        self.strength_value.setObjectName("strengthValue")
        self.strength_value.setMinimumWidth(30)
        self.strength_slider.valueChanged.connect(self._strength_moved)
        self.strength_slider.setValue(round(DEFAULT_STRENGTH * 100))

        self.restore_button = QPushButton("Use its parameters", self.full)
        self.restore_button.setObjectName("restoreInitParamsButton")
        self.restore_button.setToolTip("This image carries generation parameters: put them into the panels")
        self.restore_button.clicked.connect(self._restore_clicked)

        top = QHBoxLayout()
        top.setSpacing(6)
        top.addWidget(title)
        top.addStretch(1)
        top.addWidget(self.size_label)
        top.addWidget(self.clear_button)
        strength = QHBoxLayout()
        strength_label = QLabel("Strength", self.full)
        strength.addWidget(strength_label)
        strength.addWidget(self.strength_slider, 1)
        strength.addWidget(self.strength_value)
        right = QVBoxLayout()
        right.setSpacing(4)
        right.addLayout(top)
        right.addWidget(self.name_label)
        right.addLayout(strength)
        right.addWidget(self.restore_button, 0, Qt.AlignmentFlag.AlignLeft)
        right.addStretch(1)
        body = QHBoxLayout(self.full)
        body.setContentsMargins(8, 8, 8, 8)
        body.setSpacing(10)
        body.addWidget(self.thumb, 0, Qt.AlignmentFlag.AlignTop)
        body.addLayout(right, 1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.empty_row)
        layout.addWidget(self.full)

    # --- state
    def has_image(self) -> bool:
        return self._image is not None

    def image(self) -> Image.Image | None:
        """The init image as loaded (normalised RGB, original size)."""
        return self._image

    def params(self) -> ImageParams | None:
        """Generation parameters found in the init image."""
        return self._params

    def name(self) -> str:
        return self._name

    def fitted(self, width: int, height: int) -> Image.Image | None:
        """The init image resized and centre-cropped to ``width`` x ``height`` (cached per size)."""
        if self._image is None:
            return None
        if self._fitted is None or self._fitted[0] != (width, height):
            self._fitted = ((width, height), fit_to_size(self._image, width, height))
        return self._fitted[1]

    def strength(self) -> float:
        return self.strength_slider.value() / 100

    def set_strength(self, value: float) -> None:
        self.strength_slider.setValue(round(min(max(float(value), 0.0), 1.0) * 100))

    def set_image(self, loaded: LoadedImage, name: str) -> None:
        self._image, self._params, self._name = loaded.image, loaded.params, name
        self._fitted = None
        pixmap = QPixmap.fromImage(loaded.thumbnail)
        ratio = self.devicePixelRatioF()
        pixmap = pixmap.scaled(QSize(round(THUMB * ratio), round(THUMB * ratio)), Qt.AspectRatioMode.KeepAspectRatio,
                               Qt.TransformationMode.SmoothTransformation)
        pixmap.setDevicePixelRatio(ratio)
        self.thumb.setPixmap(pixmap)
        self.name_label.set_full_text(name)
        self.size_label.setText("{}×{}".format(*loaded.image.size))
        self._show_state()
        self.imageSet.emit(name, loaded.params)

    def clear(self) -> None:
        self._serial += 1  # a load still in flight must not bring an image back
        was_set = self._image is not None
        self._image, self._params, self._name, self._fitted = None, None, "", None
        self.thumb.clear()
        self._show_state()
        if was_set:
            self.cleared.emit()

    def _show_state(self) -> None:
        self.empty_row.setVisible(self._image is None)
        self.full.setVisible(self._image is not None)
        self.restore_button.setVisible(self._params is not None)

    def _strength_moved(self, value: int) -> None:
        self.strength_value.setText(f"{value / 100:.2f}")

    def _restore_clicked(self) -> None:
        if self._params is not None:
            self.restoreRequested.emit(self._params)

    # --- loading
    def load(self, source: str | Path | bytes | QImage, name: str = "") -> asyncio.Task:
        """Load ``source`` in the background; on success it becomes the init image (``imageSet``), otherwise
        ``loadFailed(message)`` and nothing changes. Returns the task (tests may await it)."""
        self._serial += 1
        if not name:
            name = Path(source).name if isinstance(source, (str, Path)) else "dropped image"
        return self._tasks.spawn(self._load(source, name, self._serial))

    async def _load(self, source: str | Path | bytes | QImage, name: str, serial: int) -> None:
        try:
            loaded = await self._tasks.run(read_source, source, self.max_pixels, self.max_bytes)
        except ImageLoadError as exc:
            if serial == self._serial:
                self.loadFailed.emit(f"Can't use {name} as the init image: {exc}")
            return
        except Exception as exc:  # anything unexpected from a decoder: report it, keep the app up
            log.exception("loading an init image failed")
            if serial == self._serial:
                self.loadFailed.emit(f"Can't use {name} as the init image: {type(exc).__name__}: {exc}")
            return
        if serial == self._serial:
            self.set_image(loaded, name)

    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose an init image", str(Path.home()), IMAGE_FILTER)
        if path:
            self.load(path)
