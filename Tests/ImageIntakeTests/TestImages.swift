import CVips
import I2VTestSupport
import Testing

@testable import ImageIntake

/// Test pictures made with libvips, and a decoder for the intake's output.
enum TestImages {
    enum Encoding {
        case jpeg(quality: Int = 95)
        case png
        case pngPalette
        case png16
        case webpLossless
        case gif
        case tiff
        case avif
    }

    /// A picture from a pixel function. `bands` 1 (grey), 2 (grey + alpha), 3 (RGB), 4 (RGBA or CMYK).
    static func picture(
        width: Int,
        height: Int,
        bands: Int = 3,
        _ pixel: (_ x: Int, _ y: Int) -> [UInt8]
    ) -> Picture {
        startVips()
        var data = [UInt8]()
        data.reserveCapacity(width * height * bands)
        for y in 0..<height {
            for x in 0..<width {
                let value = pixel(x, y)
                precondition(value.count == bands)
                data.append(contentsOf: value)
            }
        }
        let pointer = data.withUnsafeBytes { buffer in
            vips_image_new_from_memory_copy(
                buffer.baseAddress, buffer.count, Int32(width), Int32(height), Int32(bands), VIPS_FORMAT_UCHAR
            )
        }
        let interpretation: VipsInterpretation = bands <= 2 ? VIPS_INTERPRETATION_B_W : VIPS_INTERPRETATION_sRGB
        let image = Picture(pointer!)
        return image.with(interpretation: interpretation)
    }

    /// Left half red, right half blue.
    static func redBlue(width: Int, height: Int) -> Picture {
        picture(width: width, height: height) { x, _ in x < width / 2 ? [255, 0, 0] : [0, 0, 255] }
    }

    /// Smooth noise-free gradient with some texture, big enough that truncation hits pixel data.
    static func gradient(width: Int, height: Int) -> Picture {
        picture(width: width, height: height) { x, y in
            [UInt8(x * 255 / max(1, width - 1)), UInt8(y * 255 / max(1, height - 1)), UInt8((x ^ y) & 0xff)]
        }
    }

    static func encode(_ picture: borrowing Picture, _ encoding: Encoding) -> [UInt8] {
        var buffer: UnsafeMutableRawPointer?
        var length = 0
        let status: Int32
        switch encoding {
        case .jpeg(let quality): status = i2v_jpegsave(picture.pointer, &buffer, &length, Int32(quality))
        case .png: status = i2v_pngsave_options(picture.pointer, &buffer, &length, 0, 8)
        case .pngPalette: status = i2v_pngsave_options(picture.pointer, &buffer, &length, 1, 8)
        case .png16: status = i2v_pngsave_options(picture.pointer, &buffer, &length, 0, 16)
        case .webpLossless: status = i2v_webpsave(picture.pointer, &buffer, &length, 1)
        case .gif: status = i2v_gifsave(picture.pointer, &buffer, &length)
        case .tiff: status = i2v_tiffsave(picture.pointer, &buffer, &length)
        case .avif: status = i2v_avifsave(picture.pointer, &buffer, &length)
        }
        guard status == 0, let buffer else {
            let message = String(cString: vips_error_buffer())
            vips_error_clear()
            fatalError("test image encoding failed: \(message)")
        }
        defer { g_free(buffer) }
        return [UInt8](UnsafeRawBufferPointer(start: buffer, count: length))
    }

    /// Decoded pixels of an image file.
    struct Decoded {
        var width: Int
        var height: Int
        var bands: Int
        var format: VipsBandFormat
        var interpretation: VipsInterpretation
        var orientation: Int
        var pixels: [UInt8]

        func pixel(_ x: Int, _ y: Int) -> [UInt8] {
            let start = (y * width + x) * bands
            return Array(pixels[start..<start + bands])
        }

        /// Whether the pixel at (x, y) is within `tolerance` of `colour` in every channel.
        func pixel(_ x: Int, _ y: Int, isNear colour: [UInt8], tolerance: Int = 40) -> Bool {
            zip(pixel(x, y), colour).allSatisfy { abs(Int($0) - Int($1)) <= tolerance }
        }
    }

    static func startVips() {
        do {
            try Vips.start()
        } catch {
            fatalError("libvips did not start")
        }
    }

    static func decode(_ bytes: [UInt8]) -> Decoded {
        startVips()
        return bytes.withUnsafeBytes { buffer in
            guard let pointer = i2v_load_buffer(buffer.baseAddress, buffer.count) else {
                let message = String(cString: vips_error_buffer())
                vips_error_clear()
                fatalError("test decode failed: \(message)")
            }
            let image = Picture(pointer)
            var size = 0
            guard let memory = vips_image_write_to_memory(image.pointer, &size) else {
                fatalError("write_to_memory failed")
            }
            defer { g_free(memory) }
            return Decoded(
                width: Int(vips_image_get_width(image.pointer)),
                height: Int(vips_image_get_height(image.pointer)),
                bands: Int(vips_image_get_bands(image.pointer)),
                format: vips_image_get_format(image.pointer),
                interpretation: vips_image_get_interpretation(image.pointer),
                orientation: Int(vips_image_get_orientation(image.pointer)),
                pixels: [UInt8](UnsafeRawBufferPointer(start: memory, count: size))
            )
        }
    }

    /// A PNG whose IHDR claims `width`×`height` (CRC fixed), made from a real 1×1 PNG.
    static func pngClaiming(width: UInt32, height: UInt32) -> [UInt8] {
        var png = encode(picture(width: 1, height: 1) { _, _ in [1, 2, 3] }, .png)
        // 8-byte signature, then the IHDR chunk: length (4), "IHDR" (4), width (4), height (4), ...
        #expect(Array(png[12..<16]) == Array("IHDR".utf8))
        for (offset, value) in [(16, width), (20, height)] {
            for index in 0..<4 {
                png[offset + index] = UInt8(truncatingIfNeeded: value >> UInt32(24 - 8 * index))
            }
        }
        let crc = PNG.crc32(png[12..<29])
        for index in 0..<4 {
            png[29 + index] = UInt8(truncatingIfNeeded: crc >> UInt32(24 - 8 * index))
        }
        return png
    }

    /// A JPEG whose SOF0 frame header claims `width`×`height`.
    static func jpegClaiming(width: UInt16, height: UInt16) -> [UInt8] {
        var jpeg = encode(picture(width: 8, height: 8) { _, _ in [9, 9, 9] }, .jpeg())
        for index in 0..<(jpeg.count - 9) where jpeg[index] == 0xff && jpeg[index + 1] == 0xc0 {
            // FF C0, length (2), precision (1), height (2), width (2)
            jpeg[index + 5] = UInt8(height >> 8)
            jpeg[index + 6] = UInt8(height & 0xff)
            jpeg[index + 7] = UInt8(width >> 8)
            jpeg[index + 8] = UInt8(width & 0xff)
            return jpeg
        }
        fatalError("no SOF0 marker")
    }
}

/// A libvips image owned by a test.
struct Picture: ~Copyable {
    let pointer: UnsafeMutablePointer<VipsImage>

    init(_ pointer: UnsafeMutablePointer<VipsImage>) {
        self.pointer = pointer
    }

    deinit {
        g_object_unref(gpointer(pointer))
    }

    consuming func with(interpretation: VipsInterpretation) -> Picture {
        var out: UnsafeMutablePointer<VipsImage>?
        guard i2v_copy_interpretation(pointer, &out, interpretation) == 0, let out else {
            fatalError("copy failed")
        }
        return Picture(out)
    }

    /// Sets the EXIF orientation tag (1–8) that savers write.
    func setOrientation(_ orientation: Int) {
        vips_image_set_int(pointer, "orientation", Int32(orientation))
    }

    /// Scaled by `factor` (lanczos3), e.g. to make a 12 MP picture quickly.
    consuming func scaled(by factor: Double) -> Picture {
        var out: UnsafeMutablePointer<VipsImage>?
        guard i2v_resize(pointer, &out, factor, factor) == 0, let out else {
            fatalError("resize failed")
        }
        return Picture(out)
    }

    /// 8-bit → 16-bit (values × 257), RGB16/GREY16 interpretation.
    consuming func sixteenBit() -> Picture {
        var scaled: UnsafeMutablePointer<VipsImage>?
        guard i2v_widen_to_ushort(pointer, &scaled) == 0, let scaled else {
            fatalError("linear failed")
        }
        let wide = Picture(scaled)
        let bands = Int(vips_image_get_bands(wide.pointer))
        return wide.with(interpretation: bands >= 3 ? VIPS_INTERPRETATION_RGB16 : VIPS_INTERPRETATION_GREY16)
    }
}
