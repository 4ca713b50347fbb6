import AsyncHTTPClient
import Foundation
import I2VCore
import ImageIntake
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How one delivery attempt went.
package enum WebhookAttemptResult: Sendable, Equatable {
    /// The receiver answered 2xx.
    case delivered(status: Int)
    /// No 2xx: another status, a timeout, a failed connection or lookup.
    case failed(reason: String, status: Int?)
    /// The URL no longer passes the address rules (its DNS now points somewhere blocked).
    case refused(reason: String)
}

/// Sends one attempt: the URL is checked again (resolved, every address checked) right before it, and the
/// connection goes to a checked address, never to a second lookup's answer. One deadline covers the
/// lookup, the connection and the answer; redirects are not followed (a 3xx is a failed attempt).
package struct WebhookSender: Sendable {
    package let urlGuard: OutboundGuard
    package let signer: WebhookSigner
    package let timeout: Duration
    package var eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    /// How many of the host's addresses are tried when connecting fails.
    package var maxAddresses = 3

    package func send(_ message: WebhookMessage, now: Date = Date(), logger: Logger) async -> WebhookAttemptResult {
        let timeout = self.timeout
        let outcome = await withTaskGroup(of: WebhookAttemptResult?.self) { group in
            group.addTask { await self.attempt(message, timestamp: Int(now.timeIntervalSince1970), logger: logger) }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return Task.isCancelled ? nil : .failed(reason: "no answer within \(timeout.webhookText)", status: nil)
            }
            var first: WebhookAttemptResult?
            while first == nil, let next = await group.next() { first = next }
            group.cancelAll()
            return first
        }
        return outcome ?? .failed(reason: "no answer within \(timeout.webhookText)", status: nil)
    }

    private func attempt(_ message: WebhookMessage, timestamp: Int, logger: Logger) async -> WebhookAttemptResult {
        let destination: OutboundDestination
        do {
            destination = try await urlGuard.check(message.url)
        } catch {
            switch error {
            case .unresolvable(let reason): return .failed(reason: reason, status: nil)
            case .invalidURL(let reason), .blockedAddress(let reason, _, _): return .refused(reason: reason)
            }
        }
        let deadline =
            NIODeadline.now() + TimeAmount.nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000)
        var lastFailure = WebhookAttemptResult.failed(reason: "no address to connect to for \(destination.host)", status: nil)
        for address in destination.addresses.prefix(maxAddresses) {
            switch await post(message, timestamp: timestamp, to: destination, address: address, deadline: deadline, logger: logger) {
            case .answered(let result):
                return result
            case .notConnected(let reason):
                lastFailure = .failed(reason: reason, status: nil)
                if Task.isCancelled { return lastFailure }
            }
        }
        return lastFailure
    }

    private enum Exchange {
        case answered(WebhookAttemptResult)
        /// No answer from this address; another one of the host may do.
        case notConnected(String)
    }

    private func post(
        _ message: WebhookMessage,
        timestamp: Int,
        to destination: OutboundDestination,
        address: IPAddress,
        deadline: NIODeadline,
        logger: Logger
    ) async -> Exchange {
        var configuration = HTTPClient.Configuration(redirectConfiguration: .disallow, decompression: .disabled)
        configuration.proxy = nil
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.connectionPool.idleTimeout = .seconds(1)
        if !destination.isAddressLiteral {
            // Connect to the address just checked; the Host header and TLS still use the name.
            configuration.dnsOverride = [destination.host: address.description]
        }
        let client = HTTPClient(eventLoopGroup: eventLoopGroup, configuration: configuration)
        defer {
            // Shut down off the caller's path: a slow close must not hold the next delivery.
            Task { try? await client.shutdown() }
        }
        var request = HTTPClientRequest(url: destination.url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "i2v-server webhooks")
        for header in signer.headers(id: message.id, timestamp: timestamp, body: message.body) {
            request.headers.add(name: header.name, value: header.value)
        }
        request.body = .bytes(ByteBuffer(string: message.body))
        do {
            let response = try await client.execute(request, deadline: deadline, logger: logger)
            let status = Int(response.status.code)
            // The answer's body means nothing here; a little is read so the receiver's write completes.
            _ = try? await response.body.collect(upTo: 64 * 1024)
            if (200..<300).contains(status) { return .answered(.delivered(status: status)) }
            return .answered(.failed(reason: "HTTP status \(status)", status: status))
        } catch {
            return .notConnected(Self.describe(error, host: destination.host))
        }
    }

    private static func describe(_ error: any Error, host: String) -> String {
        if let clientError = error as? HTTPClientError {
            switch clientError {
            case .connectTimeout: return "connecting to \(host) timed out"
            case .readTimeout, .deadlineExceeded, .cancelled: return "no answer from \(host) in time"
            case .remoteConnectionClosed: return "\(host) closed the connection"
            default: return "\(clientError)"
            }
        }
        if let ioError = error as? IOError, ioError.errnoCode == ECONNREFUSED { return "connection refused by \(host)" }
        if let connectionError = error as? NIOConnectionError {
            let refused = connectionError.connectionErrors.contains { ($0.error as? IOError)?.errnoCode == ECONNREFUSED }
            return refused ? "connection refused by \(host)" : "could not connect to \(host)"
        }
        return "\(error)"
    }

    package init(urlGuard: OutboundGuard, signer: WebhookSigner, timeout: Duration, eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton)
    {
        self.urlGuard = urlGuard
        self.signer = signer
        self.timeout = timeout
        self.eventLoopGroup = eventLoopGroup
    }
}

extension Duration {
    /// "10 s", "0.5 s": for delivery errors an operator reads.
    package var webhookText: String {
        let seconds = Double(components.seconds) + Double(components.attoseconds) / 1e18
        return seconds.rounded() == seconds ? "\(Int(seconds)) s" : "\(seconds) s"
    }
}
