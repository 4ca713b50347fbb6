import Logging
import NIOCore
import Synchronization

/// Where a download's body goes as it arrives, chunk by chunk, in order.
public protocol DownloadSink: Sendable {
    /// A hint of how many bytes are coming (Content-Length, capped), before the first `write`.
    func expect(_ byteCount: Int)
    /// Takes the next chunk; throwing `DownloadSinkFailure` ends the download with that reason.
    func write(_ chunk: UnsafeRawBufferPointer) throws
}

extension DownloadSink {
    public func expect(_ byteCount: Int) {}
}

/// Why a sink could not take a chunk (a disk that is full, a file that cannot be written).
public struct DownloadSinkFailure: Error, Sendable, Equatable {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
}

/// A sink that keeps the body in memory: the image intake's, whose bodies are capped at a few MiB.
final class ByteCollector: DownloadSink {
    private let bytes = Mutex<[UInt8]>([])

    func expect(_ byteCount: Int) {
        bytes.withLock { $0.reserveCapacity(byteCount) }
    }

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        bytes.withLock { $0.append(contentsOf: chunk) }
    }

    var collected: [UInt8] { bytes.withLock { $0 } }
}

/// How a download's reasons name what is fetched, so a refused LoRA is not called an image. The image
/// intake's wording is the reasons' historical one.
struct DownloadWording: Sendable {
    /// Starts every reason of a failed download.
    var prefix: String
    /// The host, as in "<host> resolves to a blocked address".
    var host: String
    /// The body, as in "<body> is larger than N bytes".
    var body: String
    /// The URL, as in "<url> must use http or https".
    var url: String
    var accept: String
    var userAgent: String

    static let image = DownloadWording(
        prefix: ImageIntakeError.downloadFailurePrefix, host: "image host", body: "image", url: "image URL", accept: "image/*",
        userAgent: "i2v-server image intake"
    )

    func failure(_ cause: ImageIntakeError.Cause, _ detail: String) -> ImageIntakeError {
        ImageIntakeError(cause, prefix + detail)
    }
}

extension ImageIntakeError {
    /// The reason without the image download prefix that the shared resolver puts on its failures.
    var detail: String {
        reason.hasPrefix(Self.downloadFailurePrefix) ? String(reason.dropFirst(Self.downloadFailurePrefix.count)) : reason
    }
}

/// A file the service downloads on a client's behalf other than an image (a LoRA given by URL): the
/// image URLs' rules and client (the address checks, the pinned connections, the redirects, one
/// deadline), with limits of its own, streamed to a sink instead of kept in memory.
public struct FileDownload: Sendable {
    /// How the reasons name it: `"LoRA"` gives "download failed: the host resolves to …" and "LoRA URL must …".
    public var noun: String
    public var accept: String
    public var maxBytes: Int
    /// Bounds the whole download, as `ImageIntakeConfiguration.timeout` bounds an image's.
    public var timeout: Duration

    public init(noun: String, accept: String = "*/*", maxBytes: Int, timeout: Duration) {
        self.noun = noun
        self.accept = accept
        self.maxBytes = maxBytes
        self.timeout = timeout
    }

    var wording: DownloadWording {
        DownloadWording(
            prefix: "download failed: ", host: "the host", body: "the file", url: "\(noun) URL", accept: accept,
            userAgent: "i2v-server \(noun) download"
        )
    }
}

extension ImageIntake {
    /// Downloads `url` into `sink` under `file`'s limits and the intake's address rules (the private hosts
    /// allowance included); returns how many bytes it wrote. Every failure is an `ImageIntakeError` whose
    /// reason starts with "download failed: " (or names the URL's problem).
    public func download(_ url: String, _ file: FileDownload, into sink: some DownloadSink, logger: Logger? = nil) async throws(ImageIntakeError) -> Int {
        var configuration = fetcher.configuration
        configuration.timeout = file.timeout
        configuration.connectTimeout = min(configuration.connectTimeout, file.timeout)
        configuration.maxBytes = file.maxBytes
        let fetcher = ImageFetcher(
            configuration: configuration,
            eventLoopGroup: fetcher.eventLoopGroup,
            resolver: fetcher.resolver,
            addressPolicy: fetcher.addressPolicy,
            wording: file.wording
        )
        return try await fetcher.fetch(url, into: sink, logger: logger ?? self.logger).byteCount
    }
}
