import CoreMetrics
import Foundation
import HTTPTypes
import Hummingbird
import I2VCore
import I2VGPUNode
import NIOCore
import ServiceLifecycle

/// `GET /video/stream/{requestId}`: the task's status as server-sent events, one per state change and per
/// progress step, each carrying the `/video/status` body. The stream ends after the terminal event.
///
/// Event ids are not a count kept anywhere: they are computed from the task's row (its attempt, state,
/// queue position and step), so they only grow, any API node computes the same ones, and a client that
/// reconnects with `Last-Event-ID` gets every event after it — progress steps it missed while away are
/// sent from what the row says they were. The store is read every `pollInterval`; a client that goes
/// away is noticed at the next write, at the latest with the keep-alive comment.
package struct TaskEventStream: Sendable {
    package let readTask: ReadTask
    package let publicURL: String
    package let metrics: ServiceMetrics
    package var keepAlive: Duration = .seconds(15)
    package var pollInterval: Duration = .milliseconds(250)

    @Sendable package func handle(request: Request, context: AppRequestContext) async throws -> Response {
        let id = context.parameters.get("requestId") ?? ""
        let owner = context.keyHash
        guard RandomIdentifier.isHex128(id), let first = try await readTask(id: id, owner: owner) else {
            throw APIError(.notFound, "task \(id) not found")
        }
        let resumeAfter = request.headers[.lastEventID].flatMap { Int($0.trimmingCharacters(in: .whitespaces)) } ?? 0
        let stream = self
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no"],
            body: ResponseBody { writer in
                stream.metrics.openStreams.increment()
                defer { stream.metrics.openStreams.decrement() }
                try await stream.run(first: first, id: id, owner: owner, after: resumeAfter, writer: &writer)
                try await writer.finish(nil)
            }
        )
    }

    private func run(first: TaskView, id: String, owner: String?, after: Int, writer: inout any ResponseBodyWriter) async throws {
        var last = after
        var view: TaskView? = first
        var lastWrite = ContinuousClock.now
        // The first event tells a client to reconnect after one second, not the browsers' default three. It
        // rides on an event: a block of its own, without data, is one that some clients take for an event.
        var retry = "retry: 1000\n"
        while let current = view, !Task.isShuttingDownGracefully {
            let events = TaskEvents.events(after: last, view: current, publicURL: publicURL)
            for event in events {
                try await writer.write(ByteBuffer(string: retry + event.serialized))
                retry = ""
                last = event.id
                lastWrite = .now
            }
            if current.task.status.isTerminal { return }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: pollInterval) }
            if ContinuousClock.now - lastWrite >= keepAlive {
                try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                lastWrite = .now
            }
            do {
                // A task deleted meanwhile (DELETE /v1/videos) ends the stream without a terminal event.
                view = try await readTask(id: id, owner: owner)
            } catch {
                // The store is away: the last state stands, keep-alives go on, and the next read tries again.
            }
        }
    }

    package init(
        readTask: ReadTask, publicURL: String, metrics: ServiceMetrics, keepAlive: Duration = .seconds(15), pollInterval: Duration = .milliseconds(250)
    ) {
        self.readTask = readTask
        self.publicURL = publicURL
        self.metrics = metrics
        self.keepAlive = keepAlive
        self.pollInterval = pollInterval
    }
}

/// The events a task's row stands for, and their ids.
package enum TaskEvents {
    package struct Event: Sendable, Equatable {
        package var id: Int
        package var data: String

        package var serialized: String { "id: \(id)\ndata: \(data)\n\n" }

        package init(id: Int, data: String) {
            self.id = id
            self.data = data
        }
    }

    /// Each attempt has a block of ids: the wait in the queue before it (ids rising as the task moves up),
    /// then its steps. The terminal event's id is above every block.
    package static let block = 1_000_000
    package static let terminalID = 9_000_000_000_000

    package static func queuedID(attempts: Int, position: Int?) -> Int {
        (attempts + 1) * block + 1000 - min(position ?? 999, 999)
    }

    package static func stepID(attempt: Int, step: Int) -> Int {
        attempt * block + 2000 + step
    }

    /// The events after `last` that the task's current row implies, oldest first.
    package static func events(after last: Int, view: TaskView, publicURL: String) -> [Event] {
        let task = view.task
        var events: [Event] = []
        func steps(through reached: Int, total: Int) {
            let attempt = task.attempts
            let first = max(0, last - stepID(attempt: attempt, step: 0) + 1)
            guard attempt > 0, first <= reached else { return }
            for step in first...reached {
                var stepView = view
                stepView.task.status = .inProgress
                stepView.task.progressStep = step
                stepView.task.progressTotal = total
                if step < reached || task.status.isTerminal { stepView.etaSeconds = nil }
                events.append(Event(id: stepID(attempt: attempt, step: step), data: body(stepView, publicURL: publicURL)))
            }
        }
        switch task.status {
        case .inQueue:
            let id = queuedID(attempts: task.attempts, position: view.queuePosition)
            if id > last { events.append(Event(id: id, data: body(view, publicURL: publicURL))) }
        case .inProgress:
            steps(through: task.progressStep ?? 0, total: task.progressTotal ?? task.parameters.inferSteps)
        case .succeed, .failed, .cancelled:
            guard last < terminalID else { return [] }
            // The steps it ran before it ended, where the row says how far it got.
            let total = task.progressTotal ?? task.result?.inferSteps ?? task.parameters.inferSteps
            if let reached = task.status == .succeed ? total : task.progressStep { steps(through: reached, total: total) }
            events.append(Event(id: terminalID, data: body(view, publicURL: publicURL)))
        }
        return events
    }

    private static func body(_ view: TaskView, publicURL: String) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        let data = (try? encoder.encode(TaskStatusDocument(view: view, publicURL: publicURL, includeRequestID: true))) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}

extension HTTPField.Name {
    package static let lastEventID = HTTPField.Name("Last-Event-ID")!
}
