import Foundation
import HTTPTypes
import Hummingbird
import I2VCore
import I2VGPUNode
import Logging
import NIOPosix

/// Serves `/videos/<32 lowercase hex>.mp4` with single byte ranges, HEAD and conditional requests.
///
/// Hummingbird's `FileMiddleware` is not used here: it answers a range that starts past the end with a
/// 206 whose `Content-Length` is negative and streams a byte anyway, which desynchronises keep-alive
/// connections; it also reads `bytes=-N` as the first N+1 bytes and answers HEAD with 200 while
/// carrying `Content-Range`.
package struct VideoFileMiddleware<Context: RequestContext>: RouterMiddleware {
    private let files: LocalFileSystem

    package init(directory: String, threadPool: NIOThreadPool = .singleton, logger: Logger) {
        self.files = LocalFileSystem(rootFolder: directory, threadPool: threadPool, logger: logger)
    }

    package func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        guard path.hasPrefix("/videos") else { return try await next(request, context) }
        // Only names we generate reach the disk: no traversal, no temporary files, no directory listing.
        let name = path.dropFirst("/videos".count)
        guard name.hasPrefix("/"), name.hasSuffix(".mp4"), RandomIdentifier.isHex128(name.dropFirst().dropLast(4)) else {
            throw APIError(.notFound, "video not found")
        }
        guard request.method == .get || request.method == .head else { return try await next(request, context) }

        guard let id = files.getFileIdentifier(String(name)),
            let attributes = try await files.getAttributes(id: id),
            !attributes.isFolder
        else {
            throw APIError(.notFound, "video not found")
        }
        context.coreContext.endpointPath.value = "/videos/{file}"
        let answer = VideoAnswer(
            request: request.headers,
            size: attributes.size,
            modified: Int(attributes.modificationDate.timeIntervalSince1970.rounded(.down))
        )
        // HEAD gets exactly GET's status and headers; Response keeps the Content-Length we set.
        guard request.method == .get, let bytes = answer.bytes else {
            return Response(status: answer.status, headers: answer.headers)
        }
        let body = try await files.loadFile(id: id, range: bytes, context: context)
        return Response(status: answer.status, headers: answer.headers, body: body)
    }
}

/// The status and headers for a GET or HEAD of a video, and which bytes a GET sends.
///
/// Pure, so the whole decision (conditionals, If-Range, Range) is testable without a server, and HEAD
/// cannot drift from GET.
package struct VideoAnswer: Sendable, Equatable {
    package var status: HTTPResponse.Status
    package var headers: HTTPFields
    /// File bytes a GET streams; nil when there is no body.
    package var bytes: ClosedRange<Int>?

    /// - Parameters:
    ///   - size: file size in bytes.
    ///   - modified: last modification, whole seconds since the epoch.
    package init(request: HTTPFields, size: Int, modified: Int) {
        // Videos are written once under a fresh random name and never rewritten, so size and mtime
        // identify the bytes exactly: the tag may be strong, which If-Range requires.
        let eTag = "\"\(String(modified, radix: 16))-\(String(size, radix: 16))\""
        var headers: HTTPFields = [.acceptRanges: "bytes", .eTag: eTag, .lastModified: HTTPDate.format(modified)]

        if Self.isNotModified(request, eTag: eTag, modified: modified) {
            // Any Content-Length on a 304 must be the one a 200 would carry.
            headers[.contentLength] = String(size)
            self.init(status: .notModified, headers: headers, bytes: nil)
            return
        }

        if let range = Self.requestedRange(request, eTag: eTag, modified: modified) {
            guard let bytes = range.resolve(size: size) else {
                headers[.contentRange] = "bytes */\(size)"
                headers[.contentLength] = "0"
                self.init(status: .rangeNotSatisfiable, headers: headers, bytes: nil)
                return
            }
            headers[.contentType] = "video/mp4"
            headers[.contentRange] = "bytes \(bytes.lowerBound)-\(bytes.upperBound)/\(size)"
            headers[.contentLength] = String(bytes.count)
            self.init(status: .partialContent, headers: headers, bytes: bytes)
            return
        }

        headers[.contentType] = "video/mp4"
        headers[.contentLength] = String(size)
        self.init(status: .ok, headers: headers, bytes: size > 0 ? 0...(size - 1) : nil)
    }

    private init(status: HTTPResponse.Status, headers: HTTPFields, bytes: ClosedRange<Int>?) {
        self.status = status
        self.headers = headers
        self.bytes = bytes
    }

    /// If-None-Match wins over If-Modified-Since when both are sent.
    private static func isNotModified(_ request: HTTPFields, eTag: String, modified: Int) -> Bool {
        let ifNoneMatch = request[values: .ifNoneMatch]
        if !ifNoneMatch.isEmpty {
            let opaque = { (tag: Substring) in tag.hasPrefix("W/") ? tag.dropFirst(2) : tag }
            return ifNoneMatch.lazy
                .flatMap { $0.split(separator: ",") }
                .map { $0.trimmingOWS() }
                .contains { $0 == "*" || opaque($0) == Substring(eTag) }
        }
        if let since = request[.ifModifiedSince].flatMap(HTTPDate.parse) {
            return modified <= since
        }
        return false
    }

    /// The range to serve, or nil to serve the whole file: no Range, one we ignore (malformed,
    /// several ranges, several Range fields), or an If-Range that no longer matches.
    private static func requestedRange(_ request: HTTPFields, eTag: String, modified: Int) -> ByteRange? {
        let values = request[values: .range]
        guard values.count == 1, let range = ByteRange.parse(values[0]) else { return nil }
        if let ifRange = request[.ifRange].map({ $0.trimmingOWS() }) {
            if ifRange.hasPrefix("\"") || ifRange.hasPrefix("W/") {
                // Strong comparison: a weak tag never matches.
                guard ifRange == Substring(eTag) else { return nil }
            } else {
                guard HTTPDate.parse(String(ifRange)) == modified else { return nil }
            }
        }
        return range
    }
}

/// One range of a `Range: bytes=…` header.
///
/// Only a single range is supported; everything the service does not honour parses to nil, and the
/// caller then ignores the header and sends the whole file, which the protocol allows.
package enum ByteRange: Equatable, Sendable {
    /// `bytes=first-` (last is nil) or `bytes=first-last`.
    case from(first: Int, last: Int?)
    /// `bytes=-length`: the final `length` bytes.
    case suffix(length: Int)

    /// nil for another unit, a malformed spec, `last < first`, or more than one range.
    package static func parse(_ value: String) -> ByteRange? {
        guard let equals = value.firstIndex(of: "=") else { return nil }
        guard value[..<equals].lowercased() == "bytes" else { return nil }
        // A list may carry empty elements and optional whitespace around commas.
        let specs = value[value.index(after: equals)...].split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingOWS() }
            .filter { !$0.isEmpty }
        guard specs.count == 1, let spec = specs.first, let dash = spec.firstIndex(of: "-") else { return nil }
        let firstText = spec[..<dash]
        let lastText = spec[spec.index(after: dash)...]
        if firstText.isEmpty {
            guard let length = Self.number(lastText) else { return nil }
            return .suffix(length: length)
        }
        guard let first = Self.number(firstText) else { return nil }
        if lastText.isEmpty { return .from(first: first, last: nil) }
        guard let last = Self.number(lastText), first <= last else { return nil }
        return .from(first: first, last: last)
    }

    /// The bytes to send from a representation of `size` bytes, clamped to it; nil when unsatisfiable
    /// (416): the first byte is past the end, a zero-length suffix, or any range of an empty file.
    package func resolve(size: Int) -> ClosedRange<Int>? {
        guard size > 0 else { return nil }
        switch self {
        case .from(let first, let last):
            guard first < size else { return nil }
            return first...min(last ?? Int.max, size - 1)
        case .suffix(let length):
            guard length > 0 else { return nil }
            return max(0, size - length)...(size - 1)
        }
    }

    /// Decimal digits only. Positions have no upper bound in the protocol; anything past `Int.max` is
    /// past any file, so it saturates rather than failing.
    private static func number(_ text: Substring) -> Int? {
        guard !text.isEmpty else { return nil }
        var value = 0
        for byte in text.utf8 {
            guard (48...57).contains(byte) else { return nil }
            let (shifted, overflowA) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflowB) = shifted.addingReportingOverflow(Int(byte - 48))
            if overflowA || overflowB { value = Int.max } else { value = sum }
        }
        return value
    }
}

/// HTTP dates, as whole seconds since the epoch. Hummingbird's formatter is internal, and
/// DateFormatter is neither cheap nor Sendable.
package enum HTTPDate {
    private static let weekdays = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    /// IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
    package static func format(_ seconds: Int) -> String {
        let days = seconds.floorDivided(by: 86_400)
        let time = seconds - days * 86_400
        let (year, month, day) = civil(fromDays: days)
        // 1970-01-01 was a Thursday.
        let weekday = weekdays[(days + 4).floorModulo(7)]
        func two(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(weekday), \(two(day)) \(months[month - 1]) \(year) \(two(time / 3600)):\(two(time / 60 % 60)):\(two(time % 60)) GMT"
    }

    /// Any of the three forms a recipient must accept: IMF-fixdate, RFC 850 and asctime. nil if none.
    package static func parse(_ text: String) -> Int? {
        let tokens = text.split(whereSeparator: { " ,-:".contains($0) })
        let day: Substring, month: Substring, year: Substring, clock: ArraySlice<Substring>
        if tokens.count == 8, tokens[7] == "GMT" {
            (day, month, year, clock) = (tokens[1], tokens[2], tokens[3], tokens[4...6])
        } else if tokens.count == 7 {
            (month, day, clock, year) = (tokens[1], tokens[2], tokens[3...5], tokens[6])
        } else {
            return nil
        }
        guard let monthIndex = months.firstIndex(where: { $0.caseInsensitiveCompare(month) == .orderedSame }),
            let d = Int(day), (1...31).contains(d),
            var y = Int(year), year.count == 2 || year.count == 4,
            let h = Int(clock[clock.startIndex]), (0...23).contains(h),
            let m = Int(clock[clock.startIndex + 1]), (0...59).contains(m),
            let s = Int(clock[clock.startIndex + 2]), (0...60).contains(s)
        else { return nil }
        // RFC 850 has two-digit years: 70-99 are read as 19xx, the rest as 20xx.
        if year.count == 2 { y += y < 70 ? 2000 : 1900 }
        return days(fromCivil: y, monthIndex + 1, d) * 86_400 + h * 3600 + m * 60 + s
    }

    // Howard Hinnant's days-from-civil algorithms (proleptic Gregorian calendar).
    private static func days(fromCivil year: Int, _ month: Int, _ day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = y.floorDivided(by: 400)
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    private static func civil(fromDays days: Int) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = z.floorDivided(by: 146_097)
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let shiftedMonth = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * shiftedMonth + 2) / 5 + 1
        let month = shiftedMonth < 10 ? shiftedMonth + 3 : shiftedMonth - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}

extension Int {
    fileprivate func floorDivided(by divisor: Int) -> Int {
        let quotient = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? quotient - 1 : quotient
    }

    fileprivate func floorModulo(_ divisor: Int) -> Int {
        self - floorDivided(by: divisor) * divisor
    }
}

extension StringProtocol {
    /// Without the optional whitespace (spaces and tabs) HTTP allows around list elements.
    fileprivate func trimmingOWS() -> SubSequence {
        let isOWS = { (c: Character) in c == " " || c == "\t" }
        guard let start = firstIndex(where: { !isOWS($0) }), let end = lastIndex(where: { !isOWS($0) }) else {
            return self[endIndex...]
        }
        return self[start...end]
    }
}
