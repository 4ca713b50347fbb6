import CVips
import Testing

@testable import ImageIntake

/// Everything that runs libvips or the network, one test at a time, so that the timing checks (a bomb is
/// refused in milliseconds, a timeout fires on time) do not compete with each other for two cores.
@Suite("Image intake", .serialized)
struct IntakeSuites {}

let red: [UInt8] = [255, 0, 0]
let blue: [UInt8] = [0, 0, 255]
let white: [UInt8] = [255, 255, 255]

extension IntakeSuites {
    @Suite("Decode and prepare")
    struct DecodeTests {
        func prepare(
            _ bytes: [UInt8],
            _ size: ImageSizeRequest = .auto,
            planner: ResolutionPlanner = p480,
            configuration: ImageIntakeConfiguration = ImageIntakeConfiguration(allowPrivateHosts: true)
        ) async throws -> PreparedImage {
            try await withIntake(configuration) { intake in
                try await intake.prepare(imageBytes: bytes, size: size, planner: planner)
            }
        }

        /// Checks the output PNG: exact size, 8-bit, 3 bands; returns its pixels.
        func output(_ image: PreparedImage, sourceLocation: SourceLocation = #_sourceLocation) -> TestImages.Decoded {
            let decoded = TestImages.decode(image.png)
            #expect(decoded.width == image.width && decoded.height == image.height, sourceLocation: sourceLocation)
            #expect(decoded.bands == 3, sourceLocation: sourceLocation)
            #expect(decoded.format == VIPS_FORMAT_UCHAR, sourceLocation: sourceLocation)
            #expect(decoded.interpretation == VIPS_INTERPRETATION_sRGB, sourceLocation: sourceLocation)
            #expect(Array(image.png.prefix(8)) == [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], sourceLocation: sourceLocation)
            return decoded
        }

        /// Left half red, right half blue, at the output size.
        func expectRedBlue(_ decoded: TestImages.Decoded, sourceLocation: SourceLocation = #_sourceLocation) {
            let (w, h) = (decoded.width, decoded.height)
            for y in [0, h / 2, h - 1] {
                #expect(decoded.pixel(w / 8, y, isNear: red), "left at y=\(y): \(decoded.pixel(w / 8, y))", sourceLocation: sourceLocation)
                #expect(decoded.pixel(w - 1 - w / 8, y, isNear: blue), "right at y=\(y): \(decoded.pixel(w - 1 - w / 8, y))", sourceLocation: sourceLocation)
            }
        }

        @Test(
            "every accepted format: planned size, colours where they were",
            arguments: [
                ("jpeg", TestImages.Encoding.jpeg()), ("png", .png), ("webp", .webpLossless), ("gif", .gif), ("tiff", .tiff),
                ("png", .pngPalette), ("heif", .avif),
            ])
        func formats(format: String, encoding: TestImages.Encoding) async throws {
            let bytes = TestImages.encode(TestImages.redBlue(width: 640, height: 480), encoding)
            let image = try await prepare(bytes)
            #expect(image.sourceFormat == format)
            #expect(image.sourceWidth == 640 && image.sourceHeight == 480)
            #expect(image.width == 720 && image.height == 544)
            expectRedBlue(output(image))
        }

        @Test("a 1920×1080 JPEG becomes 832×464")
        func fullHD() async throws {
            let bytes = TestImages.encode(TestImages.gradient(width: 1920, height: 1080), .jpeg(quality: 90))
            let image = try await prepare(bytes)
            #expect(image.width == 832 && image.height == 464)
            let decoded = output(image)
            // The gradient runs from dark (left, top) to bright (right, bottom) in red and green.
            #expect(decoded.pixel(2, 232)[0] < 30 && decoded.pixel(829, 232)[0] > 225)
            #expect(decoded.pixel(416, 2)[1] < 30 && decoded.pixel(416, 461)[1] > 225)
        }

        /// Downscales are what made libvips compile (and later free) run-time SIMD code, which Debian's
        /// liborc does without a lock: many at once on every intake thread must each come out whole, and
        /// code generation must be off once the intake has started.
        @Test("many downscales at once each come out right, with run-time code generation off")
        func concurrentDownscales() async throws {
            let sources = [(1280, 720), (960, 540), (1600, 900), (1024, 576)].map { size in
                TestImages.encode(TestImages.redBlue(width: size.0, height: size.1), .png)
            }
            let sizes = try await withIntake(ImageIntakeConfiguration(allowPrivateHosts: true)) { intake in
                try await withThrowingTaskGroup(of: (Int, Int).self) { group in
                    for round in 0..<24 {
                        let bytes = sources[round % sources.count]
                        group.addTask {
                            let image = try await intake.prepare(imageBytes: bytes, size: .auto, planner: p480)
                            self.expectRedBlue(self.output(image))
                            return (image.width, image.height)
                        }
                    }
                    return try await group.reduce(into: [(Int, Int)]()) { $0.append($1) }
                }
            }
            #expect(sizes.count == 24)
            #expect(sizes.allSatisfy { $0 == (832, 464) }, "\(sizes)")
            #expect(vips_vector_isenabled() == 0)
        }

        @Test("transparency is flattened onto white")
        func transparency() async throws {
            // Left half opaque red, right half fully transparent red.
            let rgba = TestImages.picture(width: 400, height: 300, bands: 4) { x, _ in x < 200 ? [255, 0, 0, 255] : [255, 0, 0, 0] }
            for encoding in [TestImages.Encoding.png, .webpLossless] {
                let image = try await prepare(TestImages.encode(rgba, encoding))
                let decoded = output(image)
                #expect(decoded.pixel(10, 10, isNear: red, tolerance: 2))
                #expect(decoded.pixel(decoded.width - 10, 10, isNear: white, tolerance: 2), "\(decoded.pixel(decoded.width - 10, 10))")
            }
            // Half-transparent black over white is mid grey.
            let half = TestImages.picture(width: 64, height: 64, bands: 4) { _, _ in [0, 0, 0, 128] }
            let decoded = output(try await prepare(TestImages.encode(half, .png)))
            #expect(decoded.pixel(32, 32, isNear: [127, 127, 127], tolerance: 3), "\(decoded.pixel(32, 32))")
        }

        @Test("grayscale, grayscale with alpha and 16-bit inputs become 8-bit sRGB")
        func greyAndDeep() async throws {
            let grey = TestImages.picture(width: 300, height: 200, bands: 1) { _, _ in [128] }
            let greyOut = output(try await prepare(TestImages.encode(grey, .png)))
            #expect(greyOut.pixel(150, 100, isNear: [128, 128, 128], tolerance: 2))

            let greyAlpha = TestImages.picture(width: 300, height: 200, bands: 2) { x, _ in x < 150 ? [0, 255] : [0, 0] }
            let greyAlphaOut = output(try await prepare(TestImages.encode(greyAlpha, .png)))
            #expect(greyAlphaOut.pixel(5, 100, isNear: [0, 0, 0], tolerance: 2))
            #expect(greyAlphaOut.pixel(greyAlphaOut.width - 5, 100, isNear: white, tolerance: 2))

            let deep = TestImages.redBlue(width: 320, height: 240).sixteenBit()
            let deepBytes = TestImages.encode(deep, .png16)
            #expect(TestImages.decode(deepBytes).format == VIPS_FORMAT_USHORT)
            expectRedBlue(output(try await prepare(deepBytes)))

            let deepAlpha = TestImages.picture(width: 320, height: 240, bands: 4) { x, _ in x < 160 ? [0, 0, 255, 255] : [0, 0, 255, 0] }
                .sixteenBit()
            let deepAlphaOut = output(try await prepare(TestImages.encode(deepAlpha, .png16)))
            #expect(deepAlphaOut.pixel(5, 100, isNear: blue, tolerance: 2))
            #expect(deepAlphaOut.pixel(deepAlphaOut.width - 5, 100, isNear: white, tolerance: 2), "\(deepAlphaOut.pixel(deepAlphaOut.width - 5, 100))")
        }

        @Test("a CMYK JPEG becomes sRGB")
        func cmyk() async throws {
            // C=0 M=255 Y=255 K=0 is red; all zero is white.
            let picture = TestImages.picture(width: 200, height: 100, bands: 4) { x, _ in x < 100 ? [0, 255, 255, 0] : [0, 0, 0, 0] }
                .with(interpretation: VIPS_INTERPRETATION_CMYK)
            let bytes = TestImages.encode(picture, .jpeg())
            let decoded = output(try await prepare(bytes))
            let left = decoded.pixel(10, decoded.height / 2)
            #expect(left[0] > 180 && left[1] < 90 && left[2] < 90, "\(left)")
            #expect(decoded.pixel(decoded.width - 10, decoded.height / 2, isNear: white, tolerance: 12))
        }

        @Test(
            "EXIF orientation is applied before planning and in the pixels",
            arguments: [
                // orientation, upright size, colour at the top, colour at the bottom (nil: landscape)
                (6, (200, 400), red, blue),  // rotate 90° clockwise: the left (red) half goes to the top
                (8, (200, 400), blue, red),  // rotate 90° anticlockwise: the left half goes to the bottom
                (3, (400, 200), nil, nil),  // rotate 180°: left and right swap
                (1, (400, 200), nil, nil),
            ] as [(Int, (Int, Int), [UInt8]?, [UInt8]?)])
        func orientation(orientation: Int, upright: (Int, Int), top: [UInt8]?, bottom: [UInt8]?) async throws {
            let picture = TestImages.redBlue(width: 400, height: 200)
            picture.setOrientation(orientation)
            let bytes = TestImages.encode(picture, .jpeg())
            #expect(TestImages.decode(bytes).orientation == orientation)
            let image = try await prepare(bytes)
            #expect(image.sourceWidth == upright.0 && image.sourceHeight == upright.1)
            let planned = try p480.plan(.auto, imageWidth: upright.0, imageHeight: upright.1)
            #expect(image.width == planned.width && image.height == planned.height)
            let decoded = output(image)
            #expect(decoded.orientation == 1)
            let (w, h) = (decoded.width, decoded.height)
            if let top, let bottom {
                #expect(w < h)
                #expect(decoded.pixel(w / 2, h / 8, isNear: top), "\(decoded.pixel(w / 2, h / 8))")
                #expect(decoded.pixel(w / 2, h - h / 8, isNear: bottom), "\(decoded.pixel(w / 2, h - h / 8))")
            } else {
                #expect(w > h)
                let (left, right) = orientation == 3 ? (blue, red) : (red, blue)
                #expect(decoded.pixel(w / 8, h / 2, isNear: left), "\(decoded.pixel(w / 8, h / 2))")
                #expect(decoded.pixel(w - w / 8, h / 2, isNear: right), "\(decoded.pixel(w - w / 8, h / 2))")
            }
        }

        @Test("fixed sizes cover and centre-crop without distortion")
        func coverCrop() async throws {
            // A 1600×900 picture with a 300×300 black square in the middle on white.
            let picture = TestImages.picture(width: 1600, height: 900) { x, y in
                abs(x - 800) < 150 && abs(y - 450) < 150 ? [0, 0, 0] : [255, 255, 255]
            }
            let bytes = TestImages.encode(picture, .png)
            let portrait = try await prepare(bytes, .fixed(width: 480, height: 832))
            #expect(portrait.width == 480 && portrait.height == 832)
            #expect(portrait.sourceWidth == 1600 && portrait.sourceHeight == 900)
            let decoded = output(portrait)
            // Scale is 832/900: the square is 277 px on both axes, centred (a stretch would make it wider or taller).
            func blackRun(_ pixels: [Int], _ at: (Int) -> (Int, Int)) -> Int {
                pixels.filter { decoded.pixel(at($0).0, at($0).1, isNear: [0, 0, 0], tolerance: 60) }.count
            }
            let across = blackRun(Array(0..<480)) { ($0, 416) }
            let down = blackRun(Array(0..<832)) { (240, $0) }
            #expect(abs(across - 277) <= 3 && abs(down - 277) <= 3, "\(across)×\(down)")
            #expect(decoded.pixel(240, 416, isNear: [0, 0, 0], tolerance: 5))
            #expect(decoded.pixel(5, 5, isNear: white, tolerance: 5))

            let landscape = try await prepare(bytes, .fixed(width: 832, height: 480))
            #expect(landscape.width == 832 && landscape.height == 480)
            _ = output(landscape)
        }

        @Test("fixed sizes accept any aspect ratio; auto refuses beyond 1:4")
        func extremeAspect() async throws {
            let bytes = TestImages.encode(TestImages.redBlue(width: 1000, height: 100), .png)
            let image = try await prepare(bytes, .fixed(width: 832, height: 480))
            #expect(image.width == 832 && image.height == 480)
            _ = output(image)
            await expectFailure(.aspectRatio, "aspect ratio 10:1 is beyond 4:1 (the image is 1000×100)") {
                try await withIntake { intake in
                    try await intake.prepare(imageBytes: bytes, size: .auto, planner: p480)
                }
            }
        }

        @Test("tiny images are scaled up to the planned size")
        func tiny() async throws {
            let bytes = TestImages.encode(TestImages.picture(width: 1, height: 1) { _, _ in [10, 200, 30] }, .png)
            let image = try await prepare(bytes)
            #expect(image.width == 624 && image.height == 624)
            let decoded = output(image)
            #expect(decoded.pixel(300, 300, isNear: [10, 200, 30], tolerance: 2))
        }

        @Test(
            "truncated and corrupt images are refused",
            arguments: [
                TestImages.Encoding.png, .jpeg(), .webpLossless, .gif,
            ])
        func truncated(encoding: TestImages.Encoding) async throws {
            let bytes = TestImages.encode(TestImages.gradient(width: 512, height: 512), encoding)
            let cut = Array(bytes.prefix(bytes.count / 2))
            let error = await intakeError { try await prepare(cut) }
            #expect(error?.cause == .notAnImage)
            #expect(error?.reason.hasPrefix("not a decodable image") == true, "\(error?.reason ?? "")")
        }

        @Test(
            "formats outside the accepted set are refused by their bytes",
            arguments: [
                #"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>"#,
                "%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n",
                "P3\n1 1\n255\n255 0 0\n",  // PPM: readable by libvips, not accepted
                "",
                "GIF89a",
            ])
        func refusedFormats(text: String) async throws {
            let error = await intakeError {
                try await withIntake { intake in
                    try await intake.prepare(imageBytes: Array(text.utf8), size: .auto, planner: p480)
                }
            }
            #expect(error?.cause == .notAnImage)
            #expect(error?.reason.hasPrefix("not a decodable image") == true, "\(error?.reason ?? "")")
        }

        @Test("libvips itself refuses the loaders outside the accepted set (defence in depth)")
        func blockedLoaders() {
            TestImages.startVips()
            for text in [
                #"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>"#,
                "P3\n1 1\n255\n255 0 0\n",
                "%PDF-1.4\n%%EOF\n",
            ] {
                let bytes = Array(text.utf8)
                let image = bytes.withUnsafeBytes { i2v_open_header($0.baseAddress, $0.count) }
                #expect(image == nil, "\(text)")
                if let image { g_object_unref(gpointer(image)) }
                vips_error_clear()
            }
        }

        @Test("pixel limit: at the limit is fine, one row more is refused")
        func pixelLimit() async throws {
            let bytes = TestImages.encode(TestImages.gradient(width: 100, height: 101), .png)
            let atLimit = try await prepare(bytes, configuration: ImageIntakeConfiguration(maxPixels: 10_100))
            #expect(atLimit.sourceWidth == 100)
            await expectFailure(.tooManyPixels, "image has 10100 pixels, more than the 10000 allowed") {
                try await withIntake(ImageIntakeConfiguration(maxPixels: 10_000)) { intake in
                    try await intake.prepare(imageBytes: bytes, size: .auto, planner: p480)
                }
            }
        }

        @Test("no libvips images are leaked, on success or failure")
        func leaks() async throws {
            // Odd sizes that no other test uses: every image made for these jobs (header, decoded, rotated,
            // flattened, converted, ...) has the source size, its rotation, or the frame size, so counting
            // live images of those sizes finds leaks even while other tests decode at the same time.
            let (sourceWidth, sourceHeight) = (331, 227)
            let frame = (width: 173, height: 131)
            func source() -> Picture {
                TestImages.picture(width: sourceWidth, height: sourceHeight, bands: 4) { x, y in
                    [UInt8(x & 0xff), UInt8(y & 0xff), 90, x < 100 ? 0 : 255]
                }
            }
            let jpeg = TestImages.encode(TestImages.redBlue(width: sourceWidth, height: sourceHeight), .jpeg())
            let rotated = {
                let picture = TestImages.redBlue(width: sourceWidth, height: sourceHeight)
                picture.setOrientation(6)
                return TestImages.encode(picture, .jpeg())
            }()
            let alpha = TestImages.encode(source(), .png)
            let corrupt = Array(TestImages.encode(source(), .png).prefix(2000))
            let webp = TestImages.encode(source(), .webpLossless)
            let wide = TestImages.encode(TestImages.redBlue(width: sourceWidth, height: 57), .png)
            let sizes = [(sourceWidth, sourceHeight), (sourceHeight, sourceWidth), (frame.width, frame.height), (sourceWidth, 57)]
            func live() -> Int {
                sizes.map { Int(i2v_live_image_count(Int32($0.0), Int32($0.1))) }.reduce(0, +)
            }
            #expect(live() == 0)
            let strict = ImageIntakeConfiguration(maxPixels: 50_000, allowPrivateHosts: true)
            try await withIntake { intake in
                try await withIntake(strict) { strictIntake in
                    for _ in 0..<10 {
                        for bytes in [jpeg, rotated, alpha, webp] {
                            let image = try await intake.prepare(
                                imageBytes: bytes, size: .fixed(width: frame.width, height: frame.height), planner: p480
                            )
                            #expect(image.width == frame.width)
                        }
                        // Refused at each stage: corrupt data, too many pixels, aspect ratio (after the probe).
                        let corruptError = await intakeError { try await intake.prepare(imageBytes: corrupt, size: .auto, planner: p480) }
                        #expect(corruptError?.cause == .notAnImage)
                        let pixelsError = await intakeError { try await strictIntake.prepare(imageBytes: webp, size: .auto, planner: p480) }
                        #expect(pixelsError?.cause == .tooManyPixels)
                        let aspectError = await intakeError { try await intake.prepare(imageBytes: wide, size: .auto, planner: p480) }
                        #expect(aspectError?.cause == .aspectRatio)
                        #expect(live() == 0)
                    }
                }
            }
            #expect(live() == 0)
        }

        @Test("a 12 MP JPEG is prepared at 832×480 and at its auto size")
        func largeJPEG() async throws {
            let bytes = TestImages.encode(TestImages.gradient(width: 1000, height: 750).scaled(by: 4), .jpeg(quality: 90))
            try await withIntake { intake in
                let fixed = try await intake.prepare(imageBytes: bytes, size: .fixed(width: 832, height: 480), planner: p480)
                #expect(fixed.width == 832 && fixed.height == 480)
                #expect(fixed.sourceWidth == 4000 && fixed.sourceHeight == 3000)
                let auto = try await intake.prepare(imageBytes: bytes, size: .auto, planner: p480)
                #expect(auto.width == 720 && auto.height == 544)
            }
        }
    }
}
