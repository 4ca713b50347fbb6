import Logging
import Testing

@testable import ImageIntake

let p480 = ResolutionPlanner(nativeArea: 399_360, sizeMultiple: 16)

var testLogger: Logger {
    var logger = Logger(label: "image-intake-test")
    logger.logLevel = .critical
    return logger
}

/// Only 127.0.0.1 (the test servers) is exempt; every other blocked range stays blocked.
let loopbackServerOnly: @Sendable (IPAddress) -> BlockedRange? = { address in
    address == .v4(0x7f00_0001) ? nil : address.blockedRange
}

/// Runs `body` with an intake, and shuts it down afterwards.
func withIntake<T: Sendable>(
    _ configuration: ImageIntakeConfiguration = ImageIntakeConfiguration(timeout: .seconds(5), allowPrivateHosts: true),
    resolver: HostResolver? = nil,
    addressPolicy: (@Sendable (IPAddress) -> BlockedRange?)? = nil,
    _ body: (ImageIntake) async throws -> T
) async throws -> T {
    let intake = ImageIntake(
        configuration: configuration,
        imageThreads: 2,
        logger: testLogger,
        resolver: resolver,
        addressPolicy: addressPolicy
    )
    do {
        let value = try await body(intake)
        try await intake.shutdown()
        return value
    } catch {
        try await intake.shutdown()
        throw error
    }
}

/// The error `operation` throws (and fails the test when it succeeds).
func intakeError(
    _ operation: () async throws -> PreparedImage,
    sourceLocation: SourceLocation = #_sourceLocation
) async -> ImageIntakeError? {
    do {
        let image = try await operation()
        Issue.record("expected an error, got a \(image.width)×\(image.height) image", sourceLocation: sourceLocation)
        return nil
    } catch let error as ImageIntakeError {
        return error
    } catch {
        Issue.record("expected an ImageIntakeError, got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// Expects `operation` to fail with exactly this cause and reason.
func expectFailure(
    _ cause: ImageIntakeError.Cause,
    _ reason: String,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ operation: () async throws -> PreparedImage
) async {
    let error = await intakeError(operation, sourceLocation: sourceLocation)
    #expect(error == ImageIntakeError(cause, reason), sourceLocation: sourceLocation)
}

/// Elapsed time of `body`.
func measure<T>(_ body: () async throws -> T) async rethrows -> (T, Duration) {
    let clock = ContinuousClock()
    let start = clock.now
    let value = try await body()
    return (value, clock.now - start)
}
