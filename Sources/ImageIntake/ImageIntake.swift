import Logging
import NIOCore
import NIOPosix

/// An image ready for the model: exactly the planned frame, 8-bit sRGB, no alpha, as a lossless PNG.
public struct PreparedImage: Sendable {
    /// Lossless PNG of exactly `width`×`height`, sRGB, three 8-bit channels, no metadata.
    public var png: [UInt8]
    /// The size of the picture after EXIF orientation (what the planner saw).
    public var sourceWidth: Int
    public var sourceHeight: Int
    /// The planned frame size.
    public var width: Int
    public var height: Int
    /// The format found in the bytes: jpeg, png, webp, gif, tiff or heif.
    public var sourceFormat: String
    /// How many bytes were downloaded.
    public var sourceBytes: Int
    public var timings: Timings

    public struct Timings: Sendable, Equatable {
        /// DNS lookup, connections, redirects and the body (zero for `prepare(imageBytes:...)`).
        public var fetch: Duration
        /// Header probe, decode, orientation, cover resize, crop and colour conversion. libvips runs these
        /// as one streaming pipeline (a JPEG is shrunk while it is decoded), so they are timed together.
        public var decode: Duration
        /// The header probe alone (part of `decode`).
        public var probe: Duration
        /// PNG encoding.
        public var encode: Duration

        public var total: Duration { fetch + decode + encode }
    }
}

/// Downloads, checks and prepares the image of a submit request. One long-lived value
/// owned by the app; call `shutdown()` when the app stops.
///
/// Every failure is an `ImageIntakeError` with a concrete reason for the user (HTTP 400) and a stable
/// cause for metrics. Blocking work never runs on an event loop or on Swift's cooperative pool: DNS
/// lookups and libvips run on thread pools owned by this value.
public struct ImageIntake: Sendable {
    public let configuration: ImageIntakeConfiguration
    let fetcher: ImageFetcher
    let processor: VipsProcessor
    let imagePool: NIOThreadPool
    let dnsPool: NIOThreadPool
    let logger: Logger

    /// - Parameters:
    ///   - eventLoopGroup: where HTTP connections run (shared, not owned).
    ///   - imageThreads: how many images are decoded at once (each decode also uses libvips's own
    ///     worker threads for resizing).
    public init(
        configuration: ImageIntakeConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        imageThreads: Int = System.coreCount,
        logger: Logger
    ) {
        self.init(
            configuration: configuration,
            eventLoopGroup: eventLoopGroup,
            imageThreads: imageThreads,
            logger: logger,
            resolver: nil,
            addressPolicy: nil
        )
    }

    /// For tests: a resolver and an address policy of their own.
    init(
        configuration: ImageIntakeConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        imageThreads: Int = System.coreCount,
        logger: Logger,
        resolver: HostResolver?,
        addressPolicy: (@Sendable (IPAddress) -> BlockedRange?)?
    ) {
        self.configuration = configuration
        self.logger = logger
        self.imagePool = NIOThreadPool(numberOfThreads: max(1, imageThreads))
        self.dnsPool = NIOThreadPool(numberOfThreads: 8)
        imagePool.start()
        dnsPool.start()
        self.fetcher = ImageFetcher(
            configuration: configuration,
            eventLoopGroup: eventLoopGroup,
            resolver: resolver ?? .system(threadPool: dnsPool, eventLoopGroup: eventLoopGroup),
            addressPolicy: addressPolicy
        )
        self.processor = VipsProcessor(maxPixels: configuration.maxPixels, pngCompression: configuration.pngCompression)
        do {
            try Vips.start()
        } catch {
            logger.error("libvips could not be started; every image will fail")
        }
    }

    /// Stops the thread pools. Call once, after the last `prepare`.
    public func shutdown() async throws {
        try await imagePool.shutdownGracefully()
        try await dnsPool.shutdownGracefully()
    }

    /// Downloads `url` (already known to be an absolute http/https URL), checks it, and prepares the frame.
    /// A `data:image/…;base64,…` URL is decoded instead of downloaded, under the same byte cap.
    /// - Parameter logger: the request's logger (with its requestId); the intake's own one if nil.
    public func prepare(
        url: String,
        size: ImageSizeRequest,
        planner: ResolutionPlanner,
        logger: Logger? = nil
    ) async throws(ImageIntakeError) -> PreparedImage {
        let logger = logger ?? self.logger
        if url.prefix(5).lowercased() == "data:" {
            return try await process(try decodeDataURL(url), size: size, planner: planner, fetch: .zero, logger: logger)
        }
        let clock = ContinuousClock()
        let start = clock.now
        let download: ImageFetcher.Download
        let collector = ByteCollector()
        do {
            download = try await fetcher.fetch(url, into: collector, logger: logger)
        } catch {
            logger.debug(
                "image download refused",
                metadata: [
                    "cause": "\(error.cause.label)", "reason": "\(error.reason)",
                    "fetch_ms": "\(Self.milliseconds(clock.now - start))",
                ]
            )
            throw error
        }
        let fetch = clock.now - start
        logger.debug(
            "image downloaded",
            metadata: [
                "bytes": "\(download.byteCount)", "content_type": "\(download.contentType ?? "-")",
                "redirects": "\(download.redirects)", "fetch_ms": "\(Self.milliseconds(fetch))",
            ]
        )
        return try await process(collector.collected, size: size, planner: planner, fetch: fetch, logger: logger)
    }

    /// Prepares an image that is already in memory (no download; the same checks on the bytes).
    public func prepare(
        imageBytes: [UInt8],
        size: ImageSizeRequest,
        planner: ResolutionPlanner,
        logger: Logger? = nil
    ) async throws(ImageIntakeError) -> PreparedImage {
        try await process(imageBytes, size: size, planner: planner, fetch: .zero, logger: logger ?? self.logger)
    }

    private func process(
        _ bytes: [UInt8],
        size: ImageSizeRequest,
        planner: ResolutionPlanner,
        fetch: Duration,
        logger: Logger
    ) async throws(ImageIntakeError) -> PreparedImage {
        let processor = self.processor
        let outcome: Result<VipsProcessor.Output, ImageIntakeError>
        do {
            outcome = try await imagePool.runIfActive { () -> Result<VipsProcessor.Output, ImageIntakeError> in
                do throws(ImageIntakeError) {
                    return .success(try processor.process(bytes, size: size, planner: planner, logger: logger))
                } catch {
                    return .failure(error)
                }
            }
        } catch is CancellationError {
            throw ImageIntakeError(.internal, "image processing was cancelled")
        } catch {
            throw ImageIntakeError(.internal, "image processing is not available (shutting down)")
        }
        switch outcome {
        case .failure(let error):
            logger.debug(
                "image refused",
                metadata: ["cause": "\(error.cause.label)", "reason": "\(error.reason)", "bytes": "\(bytes.count)"]
            )
            throw error
        case .success(let output):
            let timings = PreparedImage.Timings(
                fetch: fetch,
                decode: output.probe + output.decode,
                probe: output.probe,
                encode: output.encode
            )
            logger.info(
                "image prepared",
                metadata: [
                    "format": "\(output.format)", "bytes": "\(bytes.count)",
                    "source": "\(output.sourceWidth)x\(output.sourceHeight)", "size": "\(output.width)x\(output.height)",
                    "fetch_ms": "\(Self.milliseconds(timings.fetch))", "probe_ms": "\(Self.milliseconds(timings.probe))",
                    "decode_ms": "\(Self.milliseconds(timings.decode))", "encode_ms": "\(Self.milliseconds(timings.encode))",
                    "png_bytes": "\(output.png.count)",
                ]
            )
            return PreparedImage(
                png: output.png,
                sourceWidth: output.sourceWidth,
                sourceHeight: output.sourceHeight,
                width: output.width,
                height: output.height,
                sourceFormat: output.format,
                sourceBytes: bytes.count,
                timings: timings
            )
        }
    }

    static func milliseconds(_ duration: Duration) -> String {
        let ms = duration.seconds * 1000
        return ms < 10 ? "\((ms * 100).rounded() / 100)" : "\((ms * 10).rounded() / 10)"
    }
}
