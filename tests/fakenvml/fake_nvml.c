/*
 * A small fake libnvidia-ml.so.1 for tests, so that the real pynvml code path runs.
 *
 * Configuration: the file named by $FAKE_NVML_CONFIG, read at nvmlInitWithFlags time, one line each:
 *   init_error <nvmlReturn_t>                        nvmlInitWithFlags fails with that code (9: driver not loaded)
 *   gpu <uuid> <name> <memory-bytes> <bus-id> <mig-mode 0|1> [<mig-uuid> ...]
 *   delay_ms <n> <marker-path>                       nvmlInitWithFlags creates the marker file, then takes n ms
 *                                                    (a driver without persistence mode initialising)
 *   init_log <path>                                  each nvmlInitWithFlags appends a line to it
 *   lost_once <marker-path>                          while the marker exists, nvmlDeviceGetCount removes it and
 *                                                    fails with GPU_IS_LOST (15) once
 *   affinity <bus-id> <cpu-mask-hex> <node-mask-hex> nvmlDeviceGetCpuAffinity / GetMemoryAffinity (first 64
 *                                                    bits; without the line both answer NotSupported)
 *   nvlink <bus-id> <links> <active>                 nvmlDeviceGetNvLinkState: the first <active> of <links>
 *                                                    links up, InvalidArgument beyond (NotSupported without)
 *   fabric <bus-id> <clique> <cluster-uuid-32-hex>   nvmlDeviceGetGpuFabricInfo, state completed (else
 *                                                    NotSupported)
 * Without $FAKE_NVML_CONFIG the library behaves as a host whose driver is not loaded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_GPUS 16
#define MAX_MIG 8
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_GPU_IS_LOST 15

typedef struct {
    char uuid[96];
    char name[96];
    unsigned long long memory;
    char bus_id[32];
    unsigned int mig_mode;
    int mig_count;
    char mig_uuid[MAX_MIG][96];
    int parent; /* -1 for a full GPU, else index of the parent */
    int has_affinity;
    unsigned long long cpu_mask, node_mask;
    int links, active_links; /* links 0: NVLink not supported */
    int has_fabric;
    unsigned int clique;
    unsigned char cluster[16];
} device_t;

typedef struct {
    unsigned char clusterUuid[16];
    int status;
    unsigned int cliqueId;
    unsigned char state;
} nvmlGpuFabricInfo_t;

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

static device_t gpus[MAX_GPUS];
static device_t migs[MAX_GPUS * MAX_MIG];
static int gpu_count = 0;
static int initialised = 0;
static long delay_ms = 0;
static char delay_marker[1024];
static char init_log[1024];
static char lost_marker[1024];

static device_t *by_bus(const char *bus_id) {
    for (int i = 0; i < gpu_count; i++)
        if (bus_id != NULL && strcmp(gpus[i].bus_id, bus_id) == 0) return &gpus[i];
    return NULL;
}

static int load_config(void) {
    const char *path = getenv("FAKE_NVML_CONFIG");
    gpu_count = 0;
    delay_ms = 0;
    init_log[0] = '\0';
    lost_marker[0] = '\0';
    if (path == NULL || *path == '\0') return NVML_ERROR_DRIVER_NOT_LOADED;
    FILE *file = fopen(path, "r");
    if (file == NULL) return NVML_ERROR_DRIVER_NOT_LOADED;
    char line[2048];
    int result = NVML_SUCCESS;
    while (fgets(line, sizeof line, file) != NULL) {
        char *word = strtok(line, " \t\n");
        if (word == NULL) continue;
        if (strcmp(word, "init_error") == 0) {
            result = atoi(strtok(NULL, " \t\n"));
        } else if (strcmp(word, "delay_ms") == 0) {
            delay_ms = atol(strtok(NULL, " \t\n"));
            char *marker = strtok(NULL, " \t\n");
            snprintf(delay_marker, sizeof delay_marker, "%s", marker ? marker : "");
        } else if (strcmp(word, "init_log") == 0) {
            char *log = strtok(NULL, " \t\n");
            snprintf(init_log, sizeof init_log, "%s", log ? log : "");
        } else if (strcmp(word, "lost_once") == 0) {
            char *marker = strtok(NULL, " \t\n");
            snprintf(lost_marker, sizeof lost_marker, "%s", marker ? marker : "");
        } else if (strcmp(word, "affinity") == 0) {
            device_t *gpu = by_bus(strtok(NULL, " \t\n"));
            char *cpus = strtok(NULL, " \t\n"), *nodes = strtok(NULL, " \t\n");
            if (gpu != NULL && cpus != NULL && nodes != NULL) {
                gpu->has_affinity = 1;
                gpu->cpu_mask = strtoull(cpus, NULL, 16);
                gpu->node_mask = strtoull(nodes, NULL, 16);
            }
        } else if (strcmp(word, "nvlink") == 0) {
            device_t *gpu = by_bus(strtok(NULL, " \t\n"));
            char *links = strtok(NULL, " \t\n"), *active = strtok(NULL, " \t\n");
            if (gpu != NULL && links != NULL && active != NULL) {
                gpu->links = atoi(links);
                gpu->active_links = atoi(active);
            }
        } else if (strcmp(word, "fabric") == 0) {
            device_t *gpu = by_bus(strtok(NULL, " \t\n"));
            char *clique = strtok(NULL, " \t\n"), *cluster = strtok(NULL, " \t\n");
            if (gpu != NULL && clique != NULL && cluster != NULL && strlen(cluster) == 32) {
                gpu->has_fabric = 1;
                gpu->clique = (unsigned int)atoi(clique);
                for (int i = 0; i < 16; i++) {
                    unsigned int byte = 0;
                    sscanf(cluster + 2 * i, "%2x", &byte);
                    gpu->cluster[i] = (unsigned char)byte;
                }
            }
        } else if (strcmp(word, "gpu") == 0 && gpu_count < MAX_GPUS) {
            device_t *gpu = &gpus[gpu_count];
            memset(gpu, 0, sizeof *gpu);
            gpu->parent = -1;
            snprintf(gpu->uuid, sizeof gpu->uuid, "%s", strtok(NULL, " \t\n"));
            snprintf(gpu->name, sizeof gpu->name, "%s", strtok(NULL, " \t\n"));
            for (char *c = gpu->name; *c; c++) if (*c == '_') *c = ' ';
            gpu->memory = strtoull(strtok(NULL, " \t\n"), NULL, 10);
            snprintf(gpu->bus_id, sizeof gpu->bus_id, "%s", strtok(NULL, " \t\n"));
            gpu->mig_mode = (unsigned int)atoi(strtok(NULL, " \t\n"));
            char *mig;
            while ((mig = strtok(NULL, " \t\n")) != NULL && gpu->mig_count < MAX_MIG) {
                device_t *m = &migs[gpu_count * MAX_MIG + gpu->mig_count];
                memset(m, 0, sizeof *m);
                snprintf(m->uuid, sizeof m->uuid, "%s", mig);
                m->parent = gpu_count;
                gpu->mig_count++;
            }
            gpu_count++;
        }
    }
    fclose(file);
    return result;
}

/* Reference counted, as NVML's own: nvmlShutdown releases only the last nvmlInit. */
static int references = 0;

int nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    if (references > 0) {
        /* Already initialised: counted, no delay and no log, but the configuration read again, so a test
         * process whose earlier builder kept a session still sees the configuration it wrote. */
        if (load_config() == NVML_SUCCESS) references++;
        return NVML_SUCCESS;
    }
    int result = load_config();
    if (delay_ms > 0) {
        if (delay_marker[0] != '\0') {
            FILE *marker = fopen(delay_marker, "w");
            if (marker != NULL) fclose(marker);
        }
        struct timespec pause = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
        nanosleep(&pause, NULL);
    }
    initialised = result == NVML_SUCCESS;
    if (initialised) references = 1;
    if (initialised && init_log[0] != '\0') {
        FILE *log = fopen(init_log, "a");
        if (log != NULL) { fputs("init\n", log); fclose(log); }
    }
    return result;
}
int nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
int nvmlShutdown(void) {
    if (references == 0) return NVML_ERROR_UNINITIALIZED;
    if (--references == 0) initialised = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(int result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

int nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    snprintf(version, length, "%s", "999.99.99-fake");
    return NVML_SUCCESS;
}

int nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (lost_marker[0] != '\0' && remove(lost_marker) == 0) return NVML_ERROR_GPU_IS_LOST;
    *count = (unsigned int)gpu_count;
    return NVML_SUCCESS;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, device_t **device) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (index >= (unsigned int)gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

int nvmlDeviceGetUUID(device_t *device, char *uuid, unsigned int length) {
    if (strlen(device->uuid) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    snprintf(uuid, length, "%s", device->uuid);
    return NVML_SUCCESS;
}

int nvmlDeviceGetName(device_t *device, char *name, unsigned int length) {
    snprintf(name, length, "%s", device->parent < 0 ? device->name : "MIG device");
    return NVML_SUCCESS;
}

int nvmlDeviceGetMemoryInfo(device_t *device, nvmlMemory_t *memory) {
    memory->total = device->memory;
    memory->free = device->memory;
    memory->used = 0;
    return NVML_SUCCESS;
}

int nvmlDeviceGetPciInfo_v3(device_t *device, nvmlPciInfo_t *pci) {
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busId, sizeof pci->busId, "%s", device->bus_id);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%.15s", device->bus_id);
    unsigned int domain = 0, bus = 0, dev = 0;
    sscanf(device->bus_id, "%x:%x:%x", &domain, &bus, &dev);
    pci->domain = domain; pci->bus = bus; pci->device = dev;
    pci->pciDeviceId = 0x233010de;
    return NVML_SUCCESS;
}

int nvmlDeviceGetMigMode(device_t *device, unsigned int *current, unsigned int *pending) {
    if (device->parent >= 0) return NVML_ERROR_NOT_SUPPORTED;
    *current = device->mig_mode;
    *pending = device->mig_mode;
    return NVML_SUCCESS;
}

int nvmlDeviceGetMaxMigDeviceCount(device_t *device, unsigned int *count) {
    *count = device->mig_mode ? MAX_MIG : 0;
    return NVML_SUCCESS;
}

int nvmlDeviceGetMigDeviceHandleByIndex(device_t *device, unsigned int index, device_t **mig) {
    int parent = (int)(device - gpus);
    if (index >= MAX_MIG || (int)index >= device->mig_count) return NVML_ERROR_NOT_FOUND;
    *mig = &migs[parent * MAX_MIG + index];
    return NVML_SUCCESS;
}

int nvmlDeviceGetCpuAffinity(device_t *device, unsigned int size, unsigned long long *set) {
    if (!device->has_affinity) return NVML_ERROR_NOT_SUPPORTED;
    for (unsigned int i = 0; i < size; i++) set[i] = i == 0 ? device->cpu_mask : 0;
    return NVML_SUCCESS;
}

int nvmlDeviceGetMemoryAffinity(device_t *device, unsigned int size, unsigned long long *set, unsigned int scope) {
    if (!device->has_affinity || scope != 0) return NVML_ERROR_NOT_SUPPORTED;
    for (unsigned int i = 0; i < size; i++) set[i] = i == 0 ? device->node_mask : 0;
    return NVML_SUCCESS;
}

int nvmlDeviceGetNvLinkState(device_t *device, unsigned int link, unsigned int *active) {
    if (device->links == 0) return NVML_ERROR_NOT_SUPPORTED;
    if ((int)link >= device->links) return NVML_ERROR_INVALID_ARGUMENT;
    *active = (int)link < device->active_links;
    return NVML_SUCCESS;
}

int nvmlDeviceGetGpuFabricInfo(device_t *device, nvmlGpuFabricInfo_t *info) {
    if (!device->has_fabric) return NVML_ERROR_NOT_SUPPORTED;
    memcpy(info->clusterUuid, device->cluster, 16);
    info->status = NVML_SUCCESS;
    info->cliqueId = device->clique;
    info->state = 3;
    return NVML_SUCCESS;
}
