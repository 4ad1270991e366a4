from common.component import main_for
from registry_sync.component import RegistrySync

main_for(RegistrySync)
