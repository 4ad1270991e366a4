from common.component import main_for
from gateway.component import Gateway

main_for(Gateway)
