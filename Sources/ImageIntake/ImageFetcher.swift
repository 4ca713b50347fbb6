import AsyncHTTPClient
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Downloads an image URL under the intake's limits:
/// - http and https only; no user name or password in the URL;
/// - the host is resolved here, every address is checked (unless private hosts are allowed), and the
///   connection goes to an address that was checked: the HTTP client gets a `dnsOverride` from the host
///   name to that address, so it never looks the name up again (no DNS rebinding between check and use),
///   while the Host header, TLS SNI and certificate checks still use the name;
/// - redirects are followed here (the client's own redirect handling is off), at most `maxRedirects`,
///   and every target goes through all the checks above;
/// - one deadline covers the lookup, every connection, every redirect and the body; each connection
///   set-up also has the shorter connect timeout;
/// - the body is refused as soon as Content-Length says it is too big, and otherwise counted while it
///   streams in, whatever the headers claim (chunked, close-delimited).
struct ImageFetcher: Sendable {
    struct Download: Sendable {
        var byteCount: Int
        var finalURL: String
        var contentType: String?
        var redirects: Int
    }

    /// A URL that passed the syntactic checks.
    struct Target: Sendable {
        var url: String
        var scheme: String
        /// The host exactly as the HTTP client will see it (IPv6 brackets removed).
        var host: String
        var port: Int
        /// The host is an address literal (the client connects to it without any lookup).
        var literal: IPAddress?
    }

    let configuration: ImageIntakeConfiguration
    let eventLoopGroup: any EventLoopGroup
    let resolver: HostResolver
    /// Decides whether an address may be connected to; nil means allowed. Tests replace it to reach
    /// their loopback server while the other ranges stay blocked.
    let addressPolicy: @Sendable (IPAddress) -> BlockedRange?
    /// How many of the resolved addresses are tried when connecting fails.
    let maxConnectAttempts = 3
    /// How the reasons name what is fetched, and what is asked for.
    let wording: DownloadWording

    init(
        configuration: ImageIntakeConfiguration,
        eventLoopGroup: any EventLoopGroup,
        resolver: HostResolver,
        addressPolicy: (@Sendable (IPAddress) -> BlockedRange?)? = nil,
        wording: DownloadWording = .image
    ) {
        self.configuration = configuration
        self.eventLoopGroup = eventLoopGroup
        self.resolver = resolver
        self.wording = wording
        let allowPrivate = configuration.allowPrivateHosts
        self.addressPolicy =
            addressPolicy ?? { address in
                guard let range = address.blockedRange else { return nil }
                return allowPrivate && range.isOpenedByPrivateHostAllowance ? nil : range
            }
    }

    // MARK: - fetch

    /// Downloads `url`, handing the final response's body to `sink` as it arrives.
    func fetch(_ url: String, into sink: some DownloadSink, logger: Logger) async throws(ImageIntakeError) -> Download {
        let timeout = configuration.timeout
        let deadline = NIODeadline.now() + TimeAmount(timeout)
        return try await withDeadline(
            timeout,
            onTimeout: wording.failure(.timedOut, "timed out after \(timeout.humanReadable)")
        ) { () async throws(ImageIntakeError) -> Download in
            var current = try Self.parse(url, subject: wording.url)
            var redirects = 0
            while true {
                let hop = try await self.fetchOnce(current, into: sink, deadline: deadline, logger: logger)
                switch hop {
                case .body(let byteCount, let contentType):
                    return Download(byteCount: byteCount, finalURL: current.url, contentType: contentType, redirects: redirects)
                case .redirect(let location):
                    redirects += 1
                    guard redirects <= configuration.maxRedirects else {
                        throw wording.failure(
                            .tooManyRedirects,
                            "too many redirects (more than \(configuration.maxRedirects))"
                        )
                    }
                    let next = try Self.resolveRedirect(location, from: current.url, wording: wording)
                    logger.debug(
                        "image redirect",
                        metadata: ["from": "\(current.url)", "to": "\(next.url)", "redirect": "\(redirects)"]
                    )
                    current = next
                }
            }
        }
    }

    private enum Hop: Sendable {
        /// The body went to the sink.
        case body(byteCount: Int, contentType: String?)
        case redirect(location: String)
    }

    /// One request: check the target, resolve and check its addresses, connect to a checked one.
    private func fetchOnce(_ target: Target, into sink: some DownloadSink, deadline: NIODeadline, logger: Logger) async throws(ImageIntakeError) -> Hop {
        let addresses = try await checkedAddresses(target, logger: logger)
        var lastError: ImageIntakeError?
        for address in addresses.prefix(maxConnectAttempts) {
            do {
                return try await request(target, connectingTo: address, into: sink, deadline: deadline, logger: logger)
            } catch let failure {
                if Task.isCancelled {
                    throw failure.error
                }
                guard failure.beforeResponse, failure.error.cause == .connectionRefused || failure.isConnectFailure else {
                    throw failure.error
                }
                logger.debug(
                    "image host address failed, trying the next one",
                    metadata: ["address": "\(address)", "error": "\(failure.error.reason)"]
                )
                lastError = failure.error
            }
        }
        throw lastError ?? wording.failure(.network, "no address to connect to for \(target.host)")
    }

    /// The addresses `target` may be fetched from, in preference order. Any blocked address refuses the
    /// host, even when others are public: a name that mixes them is either misconfigured or an attack.
    func checkedAddresses(_ target: Target, logger: Logger) async throws(ImageIntakeError) -> [IPAddress] {
        let allowPrivate = configuration.allowPrivateHosts
        if !allowPrivate, Self.isLocalName(target.host) {
            throw wording.failure(.blockedAddress, "\(wording.host) resolves to a blocked address (\(target.host))")
        }
        let addresses: [IPAddress]
        if let literal = target.literal {
            addresses = [literal]
        } else {
            do {
                addresses = try await resolver.resolve(target.host)
            } catch {
                throw wording.failure(error.cause, error.detail)
            }
        }
        for address in addresses {
            if let range = addressPolicy(address) {
                logger.notice(
                    "image host refused",
                    metadata: ["host": "\(target.host)", "address": "\(address)", "range": "\(range.rawValue)"]
                )
                throw wording.failure(.blockedAddress, "\(wording.host) resolves to a blocked address (\(address))")
            }
        }
        return addresses
    }

    /// `localhost` and `*.localhost` (RFC 6761), refused by name before any lookup.
    static func isLocalName(_ host: String) -> Bool {
        var name = host.lowercased()
        while name.hasSuffix(".") { name.removeLast() }
        return name == "localhost" || name.hasSuffix(".localhost")
    }

    private struct RequestFailure: Error {
        var error: ImageIntakeError
        /// No response head was received.
        var beforeResponse: Bool
        var isConnectFailure = false
    }

    private func request(
        _ target: Target,
        connectingTo address: IPAddress,
        into sink: some DownloadSink,
        deadline: NIODeadline,
        logger: Logger
    ) async throws(RequestFailure) -> Hop {
        var clientConfiguration = HTTPClient.Configuration(
            redirectConfiguration: .disallow,
            timeout: .init(connect: TimeAmount(configuration.connectTimeout), read: TimeAmount(configuration.timeout)),
            decompression: .disabled
        )
        clientConfiguration.proxy = nil
        // Fail at once when the connection cannot be made, instead of retrying until the deadline.
        clientConfiguration.connectionPool.retryConnectionEstablishment = false
        clientConfiguration.connectionPool.idleTimeout = .seconds(1)
        if target.literal == nil {
            // The client connects to the checked address instead of looking the name up again.
            clientConfiguration.dnsOverride = [target.host: address.description]
        }
        let client = HTTPClient(eventLoopGroup: eventLoopGroup, configuration: clientConfiguration)
        let result: Result<Hop, RequestFailure>
        do {
            result = .success(try await exchange(client, target, into: sink, deadline: deadline, logger: logger))
        } catch let failure as RequestFailure {
            result = .failure(failure)
        } catch {
            result = .failure(RequestFailure(error: wording.failure(.internal, "\(error)"), beforeResponse: false))
        }
        do {
            try await client.shutdown()
        } catch {
            logger.debug("image fetch client shutdown failed", metadata: ["error": "\(error)"])
        }
        return try result.get()
    }

    private func exchange(
        _ client: HTTPClient,
        _ target: Target,
        into sink: some DownloadSink,
        deadline: NIODeadline,
        logger: Logger
    ) async throws -> Hop {
        var request = HTTPClientRequest(url: target.url)
        request.method = .GET
        request.headers.add(name: "User-Agent", value: wording.userAgent)
        request.headers.add(name: "Accept", value: wording.accept)
        let response: HTTPClientResponse
        do {
            response = try await client.execute(request, deadline: deadline, logger: logger)
        } catch {
            let (mapped, connectFailure) = Self.map(error, target: target, configuration: configuration, wording: wording)
            throw RequestFailure(error: mapped, beforeResponse: true, isConnectFailure: connectFailure)
        }
        let status = response.status.code
        if (300..<400).contains(status), status != 304, let location = response.headers.first(name: "location") {
            return .redirect(location: location)
        }
        guard (200..<300).contains(status) else {
            throw RequestFailure(
                error: wording.failure(.httpStatus, "HTTP status \(status)"),
                beforeResponse: false
            )
        }
        let maxBytes = configuration.maxBytes
        let tooLarge = wording.failure(.tooLarge, "\(wording.body) is larger than \(maxBytes) bytes")
        let declaredLength = response.headers.first(name: "content-length").flatMap { Int($0) }
        if let declaredLength, declaredLength > maxBytes {
            throw RequestFailure(error: tooLarge, beforeResponse: false)
        }
        sink.expect(min(declaredLength ?? 256 * 1024, maxBytes))
        var count = 0
        do {
            for try await chunk in response.body {
                guard chunk.readableBytes <= maxBytes - count else {
                    throw RequestFailure(error: tooLarge, beforeResponse: false)
                }
                count += chunk.readableBytes
                try chunk.withUnsafeReadableBytes { try sink.write($0) }
            }
        } catch let failure as RequestFailure {
            throw failure
        } catch let failure as DownloadSinkFailure {
            throw RequestFailure(error: wording.failure(.internal, failure.reason), beforeResponse: false)
        } catch {
            let (mapped, _) = Self.map(error, target: target, configuration: configuration, wording: wording)
            throw RequestFailure(error: mapped, beforeResponse: false)
        }
        return .body(byteCount: count, contentType: response.headers.first(name: "content-type"))
    }

    // MARK: - URLs

    /// Checks a URL the way the HTTP client will read it (Foundation's URL parser, as AsyncHTTPClient
    /// uses), so that the host checked here is the host the client connects to. `subject` names the URL in
    /// the reasons (the webhook guard checks its URLs with the same rules).
    static func parse(_ string: String, subject: String = "image URL") throws(ImageIntakeError) -> Target {
        guard let url = URL(string: string), let scheme = url.scheme?.lowercased() else {
            throw ImageIntakeError(.invalidURL, "\(subject) is not a valid URL")
        }
        guard scheme == "http" || scheme == "https" else {
            throw ImageIntakeError(.invalidURL, "\(subject) must use http or https, not \(scheme)")
        }
        // Any "@" in the authority means user information, even an empty one.
        let afterScheme = string.drop { $0 != ":" }.dropFirst().drop { $0 == "/" }
        let authority = afterScheme.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        if url.user != nil || url.password != nil || authority.contains("@") {
            throw ImageIntakeError(.credentialsInURL, "\(subject) must not contain a user name or password")
        }
        guard var host = url.host, !host.isEmpty else {
            throw ImageIntakeError(.invalidURL, "\(subject) has no host")
        }
        if host.hasPrefix("["), host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        }
        let literal = IPAddress(literal: host)
        // Only plain ASCII names (letters, digits, '-', '_', '.') or address literals: nothing that one
        // parser could decode differently from another (percent escapes, Unicode, zone ids, ...).
        if literal == nil {
            let valid = host.utf8.allSatisfy { byte in
                (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
                    || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
                    || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
                    || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
            }
            guard valid, host.utf8.count <= 253 else {
                throw ImageIntakeError(.invalidURL, "\(subject) has an invalid host")
            }
        }
        let port = url.port ?? (scheme == "https" ? 443 : 80)
        guard (1...65535).contains(port) else {
            throw ImageIntakeError(.invalidURL, "\(subject) has an invalid port")
        }
        return Target(url: string, scheme: scheme, host: host, port: port, literal: literal)
    }

    static func resolveRedirect(_ location: String, from base: String, wording: DownloadWording = .image) throws(ImageIntakeError) -> Target {
        guard let baseURL = URL(string: base),
            let next = URL(string: location.trimmingWhitespace(), relativeTo: baseURL)?.absoluteURL
        else {
            throw wording.failure(.invalidURL, "redirect to an invalid URL")
        }
        let string = next.absoluteString
        do {
            return try parse(string, subject: wording.url)
        } catch {
            if error.cause == .invalidURL {
                throw wording.failure(.invalidURL, "redirect to an unusable URL (\(error.reason))")
            }
            throw error
        }
    }

    // MARK: - errors

    /// Maps a client error to a reason; the flag tells whether it happened while connecting (another
    /// address of the host may work).
    static func map(
        _ error: any Error,
        target: Target,
        configuration: ImageIntakeConfiguration,
        wording: DownloadWording = .image
    ) -> (ImageIntakeError, connectFailure: Bool) {
        let connectTimedOut = wording.failure(
            .timedOut,
            "connecting to \(target.host) timed out after \(configuration.connectTimeout.humanReadable)"
        )
        let timedOut = wording.failure(.timedOut, "timed out after \(configuration.timeout.humanReadable)")
        if let clientError = error as? HTTPClientError {
            switch clientError {
            case .connectTimeout:
                return (connectTimedOut, true)
            case .tlsHandshakeTimeout:
                return (wording.failure(.timedOut, "TLS handshake with \(target.host) timed out"), true)
            case .readTimeout, .deadlineExceeded:
                return (timedOut, false)
            case .remoteConnectionClosed:
                return (wording.failure(.network, "the server closed the connection"), false)
            case .cancelled:
                return (timedOut, false)
            default:
                return (wording.failure(.network, "\(clientError)"), false)
            }
        }
        if let errno = connectErrno(error) {
            switch errno {
            case ECONNREFUSED:
                return (wording.failure(.connectionRefused, "connection refused"), true)
            case ENETUNREACH, EHOSTUNREACH, EADDRNOTAVAIL, EAFNOSUPPORT:
                return (wording.failure(.network, "\(target.host) is unreachable"), true)
            case ECONNRESET, EPIPE:
                return (wording.failure(.network, "connection reset by the server"), false)
            case ETIMEDOUT:
                return (connectTimedOut, true)
            default:
                return (wording.failure(.network, "\(String(cString: strerror(errno)))"), true)
            }
        }
        if let channelError = error as? ChannelError, case .connectTimeout = channelError {
            return (connectTimedOut, true)
        }
        let typeName = String(reflecting: type(of: error))
        if typeName.contains("NIOSSL") || typeName.contains("BoringSSL") {
            return (wording.failure(.tls, "TLS error with \(target.host) (\(error))"), false)
        }
        if error is CancellationError {
            return (timedOut, false)
        }
        return (wording.failure(.network, "\(error)"), false)
    }

    /// The errno of a failed connect, wherever NIO put it.
    private static func connectErrno(_ error: any Error) -> CInt? {
        if let ioError = error as? IOError {
            return ioError.errnoCode
        }
        if let connectionError = error as? NIOConnectionError {
            for attempt in connectionError.connectionErrors {
                if let code = connectErrno(attempt.error) {
                    return code
                }
            }
        }
        return nil
    }
}

extension String {
    fileprivate func trimmingWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }
        return String(self.drop(while: isSpace).reversed().drop(while: isSpace).reversed())
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

/// Runs `body`; throws `onTimeout` (and cancels `body`) when it has not finished after `timeout`.
func withDeadline<T: Sendable>(
    _ timeout: Duration,
    onTimeout: ImageIntakeError,
    _ body: @escaping @Sendable () async throws(ImageIntakeError) -> T
) async throws(ImageIntakeError) -> T {
    let outcome: Result<T, ImageIntakeError> = await withTaskGroup(of: Result<T, ImageIntakeError>?.self) { group in
        group.addTask {
            do throws(ImageIntakeError) {
                return .success(try await body())
            } catch {
                return .failure(error)
            }
        }
        group.addTask {
            do {
                try await Task.sleep(for: timeout)
                return .failure(onTimeout)
            } catch {
                return nil  // cancelled: the body finished first
            }
        }
        var first: Result<T, ImageIntakeError>?
        while first == nil, let next = await group.next() {
            first = next
        }
        group.cancelAll()
        return first ?? .failure(onTimeout)
    }
    return try outcome.get()
}
