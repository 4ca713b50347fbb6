import ImageIntake

/// The use cases every API surface shares, built once from the service's parts.
struct TaskUseCases: Sendable {
    let submit: SubmitTask
    let read: ReadTask
    let cancel: CancelTask
    let list: ListTasks
    let delete: DeleteTask

    init(
        store: any TaskStore & TaskListing,
        media: MediaStore,
        intake: ImageIntake,
        models: ModelCatalogSource,
        queueChanged: DispatchSignal,
        deviceMemory: @escaping @Sendable () async -> DeviceMemory?,
        metrics: ServiceMetrics,
        configuration: ServiceConfiguration
    ) {
        submit = SubmitTask(
            store: store,
            media: media,
            intake: intake,
            models: models,
            queueChanged: queueChanged,
            deviceMemory: deviceMemory,
            metrics: metrics,
            limits: .init(
                maxQueued: configuration.maxQueued,
                submitsPerMinute: configuration.submitsPerMinute,
                idempotencyPatience: configuration.imageTimeout + .seconds(60)
            )
        )
        read = ReadTask(store: store, estimate: EstimateETA(store: store, lease: configuration.lease))
        cancel = CancelTask(store: store, media: media, queueChanged: queueChanged, metrics: metrics)
        list = ListTasks(store: store)
        delete = DeleteTask(
            store: store, media: media, queueChanged: queueChanged, metrics: metrics,
            webhooks: (store as? any WebhookOutbox).map { WebhookDeletionHook(outbox: $0, publicURL: configuration.publicURL) }
        )
    }
}
