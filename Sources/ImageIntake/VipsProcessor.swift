import CVips
import Logging

/// libvips warnings (corrupt-but-readable data, unknown EXIF tags, ...) go to the log at debug level
/// instead of stderr: a public service must not let a client fill the console.
private let vipsLogger = Logger(label: "i2v.image-intake.libvips")

private func vipsLogHandler(
    _ domain: UnsafePointer<gchar>?,
    _ level: GLogLevelFlags,
    _ message: UnsafePointer<gchar>?,
    _ userData: gpointer?
) {
    guard let message else { return }
    vipsLogger.debug("\(String(cString: message))")
}

/// One reference to a libvips image, released when it goes out of scope.
struct VipsRef: ~Copyable {
    let pointer: UnsafeMutablePointer<VipsImage>

    init(_ pointer: UnsafeMutablePointer<VipsImage>) {
        self.pointer = pointer
    }

    deinit {
        g_object_unref(gpointer(pointer))
    }

    var width: Int { Int(vips_image_get_width(pointer)) }
    var height: Int { Int(vips_image_get_height(pointer)) }
    var bands: Int { Int(vips_image_get_bands(pointer)) }
    var format: VipsBandFormat { vips_image_get_format(pointer) }
    var interpretation: VipsInterpretation { vips_image_get_interpretation(pointer) }
    var hasAlpha: Bool { vips_image_hasalpha(pointer) != 0 }
    /// EXIF orientation 5–8 swaps width and height.
    var orientationSwapsSides: Bool { vips_image_get_orientation_swap(pointer) != 0 }

    /// Applies a libvips operation that writes a new image to `out`.
    func apply(
        _ what: String,
        _ operation: (UnsafeMutablePointer<VipsImage>, UnsafeMutablePointer<UnsafeMutablePointer<VipsImage>?>) -> Int32
    ) throws(VipsFailure) -> VipsRef {
        var out: UnsafeMutablePointer<VipsImage>?
        guard operation(pointer, &out) == 0, let out else {
            throw VipsFailure.take(what)
        }
        return VipsRef(out)
    }
}

/// A libvips error, with the text of its error buffer (for logs; users get a fixed reason).
struct VipsFailure: Error, Sendable {
    var operation: String
    var message: String

    /// Takes (copies and clears, under libvips's lock) the error buffer. The buffer is global to the
    /// process, so under concurrent failures a message may carry another job's text too; it is only logged.
    static func take(_ operation: String) -> VipsFailure {
        guard let copy = vips_error_buffer_copy() else {
            return VipsFailure(operation: operation, message: "")
        }
        defer { g_free(copy) }
        return VipsFailure(operation: operation, message: String(cString: copy).trimmingNewlines())
    }
}

extension String {
    fileprivate func trimmingNewlines() -> String {
        var text = self
        while text.last == "\n" { text.removeLast() }
        return text.split(separator: "\n").joined(separator: "; ")
    }
}

/// libvips, started once per process.
enum Vips {
    private static let started: Bool = {
        guard i2v_vips_start("i2v-server") == 0 else {
            return false
        }
        let levels =
            G_LOG_LEVEL_WARNING.rawValue | G_LOG_LEVEL_MESSAGE.rawValue | G_LOG_LEVEL_INFO.rawValue
            | G_LOG_LEVEL_DEBUG.rawValue
        g_log_set_handler("VIPS", GLogLevelFlags(rawValue: levels), vipsLogHandler, nil)
        return true
    }()

    static func start() throws(ImageIntakeError) {
        guard started else {
            throw ImageIntakeError(.internal, "the image library could not be started")
        }
    }

    /// The loader libvips picks for these bytes, by their content (never by Content-Type), as a short
    /// format name; nil when the bytes are in no format the intake accepts.
    static func format(of bytes: UnsafeRawBufferPointer) -> String? {
        guard let base = bytes.baseAddress, bytes.count > 0,
            let loader = vips_foreign_find_load_buffer(base, bytes.count)
        else {
            vips_error_clear()
            return nil
        }
        let name = String(cString: loader)
        // The loaders allowed in i2v_vips_start. libvips names loaders it would refuse to run too
        // (it answers VipsForeignLoadSvgBuffer for SVG even while SVG is blocked), so check here as well.
        let accepted: [(String, String)] = [
            ("VipsForeignLoadJpeg", "jpeg"), ("VipsForeignLoadPng", "png"), ("VipsForeignLoadWebp", "webp"),
            ("VipsForeignLoadNsgif", "gif"), ("VipsForeignLoadTiff", "tiff"), ("VipsForeignLoadHeif", "heif"),
        ]
        return accepted.first { name.hasPrefix($0.0) }?.1
    }
}

/// Decodes, checks and converts one image; runs on the intake's thread pool (blocking work).
struct VipsProcessor: Sendable {
    var maxPixels: Int
    var pngCompression: Int

    struct Output: Sendable {
        var png: [UInt8]
        var format: String
        var sourceWidth: Int
        var sourceHeight: Int
        var width: Int
        var height: Int
        var probe: Duration
        var decode: Duration
        var encode: Duration
    }

    /// The whole job. `bytes` is not copied by libvips: every image made from it lives inside this call.
    func process(
        _ bytes: [UInt8],
        size: ImageSizeRequest,
        planner: ResolutionPlanner,
        logger: Logger
    ) throws(ImageIntakeError) -> Output {
        try Vips.start()
        // libpng would inflate a PNG's compressed text on every open of the file (PNGTextChunks says why).
        let bytes = PNGTextChunks.stripped(bytes) ?? bytes
        let result: Result<Output, ImageIntakeError> = bytes.withUnsafeBytes { buffer in
            do throws(ImageIntakeError) {
                return .success(try process(buffer, size: size, planner: planner, logger: logger))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    private func process(
        _ buffer: UnsafeRawBufferPointer,
        size: ImageSizeRequest,
        planner: ResolutionPlanner,
        logger: Logger
    ) throws(ImageIntakeError) -> Output {
        let clock = ContinuousClock()
        let start = clock.now
        guard let base = buffer.baseAddress, buffer.count > 0 else {
            throw ImageIntakeError(.notAnImage, "not a decodable image (the body is empty)")
        }
        guard let format = Vips.format(of: buffer) else {
            throw ImageIntakeError(.notAnImage, "not a decodable image")
        }

        // 1. Header only: libvips has no pixel limit of its own, so refuse bombs before decoding.
        guard let headerPointer = i2v_open_header(base, buffer.count) else {
            let failure = VipsFailure.take("header")
            logger.debug("image header unreadable", metadata: ["format": "\(format)", "vips": "\(failure.message)"])
            throw ImageIntakeError(.notAnImage, "not a decodable image (corrupt \(format) header)")
        }
        let header = VipsRef(headerPointer)
        let (rawWidth, rawHeight) = (header.width, header.height)
        let pixels = rawWidth.multipliedReportingOverflow(by: rawHeight)
        guard !pixels.overflow, pixels.partialValue <= maxPixels else {
            throw ImageIntakeError(
                .tooManyPixels,
                "image has \(pixels.overflow ? Int.max : pixels.partialValue) pixels, more than the \(maxPixels) allowed"
            )
        }
        let swaps = header.orientationSwapsSides
        let sourceWidth = swaps ? rawHeight : rawWidth
        let sourceHeight = swaps ? rawWidth : rawHeight
        let probed = clock.now

        // 2. Frame size from the upright size, then decode with shrink-on-load, rotate upright, cover-resize
        //    and centre-crop (libvips streams these together), and normalise to 8-bit sRGB without alpha.
        let target = try planner.plan(size, imageWidth: sourceWidth, imageHeight: sourceHeight)
        let decoded: VipsRef
        do throws(VipsFailure) {
            let mutableBase = UnsafeMutableRawPointer(mutating: base)
            var out: UnsafeMutablePointer<VipsImage>?
            guard i2v_thumbnail_cover(mutableBase, buffer.count, &out, Int32(target.width), Int32(target.height)) == 0,
                let out
            else {
                throw VipsFailure.take("thumbnail")
            }
            let thumbnail = VipsRef(out)
            let exact = try Self.exactSize(thumbnail, width: target.width, height: target.height)
            let rgb = try Self.normalise(exact)
            // Materialise: this is where the pixels are actually decoded and resized.
            guard let memory = vips_image_copy_memory(rgb.pointer) else {
                throw VipsFailure.take("copy_memory")
            }
            decoded = VipsRef(memory)
        } catch {
            logger.debug(
                "image decode failed",
                metadata: ["format": "\(format)", "operation": "\(error.operation)", "vips": "\(error.message)"]
            )
            throw ImageIntakeError(.notAnImage, "not a decodable image (corrupt or truncated \(format) data)")
        }
        guard decoded.width == target.width, decoded.height == target.height, decoded.bands == 3,
            decoded.format == VIPS_FORMAT_UCHAR
        else {
            throw ImageIntakeError(.internal, "image conversion produced an unexpected result")
        }
        let decodedAt = clock.now

        // 3. Lossless PNG.
        var pngPointer: UnsafeMutableRawPointer?
        var pngLength = 0
        guard i2v_pngsave(decoded.pointer, &pngPointer, &pngLength, Int32(pngCompression)) == 0, let pngPointer else {
            let failure = VipsFailure.take("pngsave")
            logger.error("PNG encoding failed", metadata: ["vips": "\(failure.message)"])
            throw ImageIntakeError(.internal, "the prepared image could not be encoded")
        }
        let png = [UInt8](UnsafeRawBufferPointer(start: pngPointer, count: pngLength))
        g_free(pngPointer)
        let encoded = clock.now

        return Output(
            png: png,
            format: format,
            sourceWidth: sourceWidth,
            sourceHeight: sourceHeight,
            width: target.width,
            height: target.height,
            probe: probed - start,
            decode: decodedAt - probed,
            encode: encoded - decodedAt
        )
    }

    /// vips_thumbnail with crop gives exactly width×height; should it ever be off by a pixel, scale to
    /// cover and crop the centre here.
    private static func exactSize(_ image: consuming VipsRef, width: Int, height: Int) throws(VipsFailure) -> VipsRef {
        if image.width == width, image.height == height {
            return image
        }
        let scale = max(Double(width) / Double(image.width), Double(height) / Double(image.height))
        var covered = try image.apply("resize") { i2v_resize($0, $1, scale, scale) }
        if covered.width < width || covered.height < height {
            // Rounding left it a pixel short: stretch by that pixel.
            let hscale = Double(max(width, covered.width)) / Double(covered.width)
            let vscale = Double(max(height, covered.height)) / Double(covered.height)
            covered = try covered.apply("resize") { i2v_resize($0, $1, hscale, vscale) }
        }
        let left = (covered.width - width) / 2
        let top = (covered.height - height) / 2
        return try covered.apply("extract_area") {
            i2v_extract_area($0, $1, Int32(left), Int32(top), Int32(width), Int32(height))
        }
    }

    /// 8-bit sRGB, three bands: alpha flattened onto white, grey/16-bit/CMYK/Lab converted.
    private static func normalise(_ image: consuming VipsRef) throws(VipsFailure) -> VipsRef {
        var current = image
        if current.hasAlpha {
            let sixteenBit =
                current.format == VIPS_FORMAT_USHORT || current.interpretation == VIPS_INTERPRETATION_RGB16
                || current.interpretation == VIPS_INTERPRETATION_GREY16
            let maxAlpha: Double = sixteenBit ? 65535 : 255
            current = try current.apply("flatten") { i2v_flatten_white($0, $1, maxAlpha) }
        }
        if current.interpretation != VIPS_INTERPRETATION_sRGB || current.bands < 3 {
            var converted: UnsafeMutablePointer<VipsImage>?
            if i2v_colourspace(current.pointer, &converted, VIPS_INTERPRETATION_sRGB) == 0, let converted {
                current = VipsRef(converted)
            } else {
                // No colour route (e.g. a TIFF tagged "multiband"): take the bands as they are.
                vips_error_clear()
            }
        }
        if current.bands == 1 {
            current = try current.apply("bandjoin") { i2v_bandjoin3($0, $1) }
        } else if current.bands > 3 {
            current = try current.apply("extract_band") { i2v_extract_band($0, $1, 0, 3) }
        }
        if current.format != VIPS_FORMAT_UCHAR {
            current = try current.apply("cast") { i2v_cast_uchar($0, $1) }
        }
        return current
    }
}
